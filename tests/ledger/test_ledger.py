"""The ledger on SQLite and on a real PostgreSQL: migrations, batches, claims, fencing."""

import random
import threading
from dataclasses import replace

import pytest
from sqlalchemy import inspect

from farm.errors import ConflictError, NotFound
from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.variants import PromptRow
from farm.ledger import Artifact, Ledger
from farm.ledger.ledger import current_revision, head_revision, make_engine, upgrade
from farm.ledger.models import Base


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    request.applymarker(pytest.mark.postgres)
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(ledger_url):
    if ledger_url.startswith("postgresql"):
        engine = make_engine(ledger_url)
        upgrade(engine)  # what `farm db upgrade` does
        engine.dispose()
    ledger = Ledger(ledger_url)
    yield ledger
    ledger.close()


def planned(n=4, prompt="a lighthouse", seed=100):
    return plan([PromptRow(JobRequest(prompt=prompt))], JobRequest(), variants=n, seed=seed,
                catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0))


def create(ledger, n=4, key=None, **kw):
    p = planned(n, **kw)
    return ledger.create_batch(specs=p.specs, spec=p.record(), request_digest=p.request_digest,
                               base_seed=p.base_seed, idempotency_key=key)


def test_migrations_match_models(ledger_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(ledger_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert set(inspect(engine).get_table_names()) >= {"batches", "jobs", "attempts", "artifacts", "workers"}
    engine.dispose()


def test_sqlite_is_migrated_on_first_use_and_postgres_asks_for_db_upgrade(ledger_url):
    from farm.errors import InfrastructureError

    if ledger_url.startswith("sqlite"):
        Ledger(ledger_url).close()
        assert current_revision(make_engine(ledger_url)) == head_revision()
    else:
        with pytest.raises(InfrastructureError, match="run `farm db upgrade`"):
            Ledger(ledger_url)


def test_batch_and_jobs_are_written_together(ledger):
    new = create(ledger, 4)
    assert new.created and len(new.job_ids) == 4
    assert ledger.batch_counts(new.id)["queued"] == 4
    rows = ledger.list_jobs(new.id)
    assert [r.seed for r in rows] == [100, 101, 102, 103]
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].spec.adapter_dicts() == [{"name": "tiny-sd-lcm-lora", "weight": 1.0, "role": "accelerator"}]


def test_unknown_batch(ledger):
    with pytest.raises(NotFound, match="no batch 'nope'"):
        ledger.batch_counts("nope")


def test_idempotency_key_returns_the_existing_batch(ledger):
    first = create(ledger, 3, key="k1")
    again = create(ledger, 3, key="k1")
    assert (again.id, again.created, again.job_ids) == (first.id, False, first.job_ids)
    with pytest.raises(ConflictError, match="different submission"):
        create(ledger, 5, key="k1")


def test_concurrent_submissions_with_one_key_make_one_batch(ledger):
    results, errors = [], []

    def go():
        try:
            results.append(create(ledger, 2, key="same"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1


def test_claim_is_a_compare_and_set(ledger):
    new = create(ledger, 2)
    first = ledger.claim(new.job_ids, worker="w1", device="cpu", lease_s=60)
    assert [c.job_id for c in first] == new.job_ids
    assert ledger.claim(new.job_ids, worker="w2", device="cpu", lease_s=60) == []  # duplicate delivery
    assert ledger.batch_counts(new.id)["running"] == 2


def test_completion_needs_the_live_token(ledger):
    new = create(ledger, 1)
    [claim] = ledger.claim(new.job_ids, worker="w1", device="cpu", lease_s=60)
    artifact = Artifact(store_url="file:///x", key="batches/b/00000-100.png", sha256="0" * 64,
                        bytes=10, width=64, height=64, content_type="image/png")
    assert not ledger.complete(claim.job_id, "stale-token", artifact=artifact, timings={}, batch_size=1)
    assert ledger.complete(claim.job_id, claim.token, artifact=artifact,
                           timings={"denoise_ms": 12.5, "total_ms": 20.0}, batch_size=4)
    assert not ledger.complete(claim.job_id, claim.token, artifact=artifact, timings={}, batch_size=1)
    [row] = ledger.list_jobs(new.id)
    assert row.state == "succeeded" and row.artifact.key == artifact.key
    assert row.timings["denoise"] == 12.5 and row.batch_size == 4


def test_requeue_then_a_new_claim_fences_the_old_attempt(ledger):
    new = create(ledger, 1)
    [old] = ledger.claim(new.job_ids, worker="w1", device="cpu", lease_s=60)
    assert ledger.requeue(old.job_id, old.token, error="lease lapsed")
    [fresh] = ledger.claim(new.job_ids, worker="w2", device="cpu", lease_s=60)
    assert not ledger.fail(old.job_id, old.token, error="late failure from the old attempt")
    assert ledger.fail(fresh.job_id, fresh.token, error="boom")
    [row] = ledger.list_jobs(new.id)
    assert (row.state, row.attempts, row.last_error) == ("failed", 2, "boom")


def test_lease_renewal_answers_which_held_jobs_are_still_ours(ledger):
    from datetime import timedelta

    from sqlalchemy import select, update

    from farm.ledger.models import Attempt, Job

    new = create(ledger, 3)
    kept, superseded, cancelled = ledger.claim(new.job_ids, worker="w1", device="cpu", lease_s=5)
    assert ledger.requeue(superseded.job_id, superseded.token, error="lease lapsed")
    [newer] = ledger.claim([superseded.job_id], worker="w2", device="cpu", lease_s=5)
    with ledger.session() as s:  # one running job cancelled under the worker
        s.execute(update(Job).where(Job.id == cancelled.job_id).values(state="cancelled"))
    held = {kept.token, superseded.token, cancelled.token}
    assert ledger.running_tokens(held) == {kept.token}
    assert ledger.renew_leases(held, 3600) == {kept.token}
    with ledger.session() as s:
        leases = {a.token: a.lease_expires_at for a in s.scalars(select(Attempt))}
    assert leases[kept.token] > leases[newer.token] > leases[cancelled.token] - timedelta(seconds=1)
    assert (leases[kept.token] - leases[cancelled.token]).total_seconds() > 3000  # only the owned one renewed


def test_workers_register_and_heartbeat(ledger):
    ledger.register_worker(name="farm-cpu0@h", host="h", pid=1, device="cpu", gpu_name=None,
                           versions={"torch": "x"})
    ledger.heartbeat("farm-cpu0@h", resident_models=["tiny-sd"], rendered=3)
    ledger.heartbeat("farm-cpu0@h", rendered=2)
    [worker] = ledger.workers()
    assert (worker.resident_models, worker.images_rendered, worker.state) == (["tiny-sd"], 5, "active")


def test_the_ledger_hands_out_typed_values_with_the_spec_it_was_given(ledger):
    from farm.ledger import BatchInfo, Claim, JobView, StoredJob
    from farm.ledger.mapping import SPEC_COLUMNS

    p = plan([PromptRow(JobRequest(prompt="a red fox"))],
             JobRequest(adapters=("tiny-sd-toy:0.5",), negative_prompt="fog", guidance=1.5),
             variants=2, seed=7, catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0))
    new = ledger.create_batch(specs=p.specs, spec=p.record(), request_digest=p.request_digest, base_seed=p.base_seed)
    assert isinstance(ledger.get_batch(new.id), BatchInfo)
    views = ledger.list_jobs(new.id)
    assert all(isinstance(v, JobView) for v in views)
    # spec -> row -> spec is the identity, field for field, and keeps the digest
    assert [v.spec for v in views] == [replace(s, warnings=()) for s in p.specs]
    assert [v.digest for v in views] == [s.digest for s in p.specs]
    assert "kind" in SPEC_COLUMNS and "warnings" not in SPEC_COLUMNS
    claims = ledger.claim(new.job_ids, worker="w", device="cpu", lease_s=60)
    assert all(isinstance(c, Claim) and isinstance(c.job, StoredJob) for c in claims)
    assert [c.spec for c in claims] == [v.spec for v in views]
    assert [(c.batch_id, c.index) for c in claims] == [(new.id, 0), (new.id, 1)]
    [loaded] = ledger.load_jobs([claims[1].job_id])
    assert loaded.spec == claims[1].spec and loaded.state == "running"
    assert views[0].as_dict()["adapters"] == views[0].spec.adapter_dicts()
    assert views[0].as_dict()["kind"] == "txt2img"


def test_existing_ledgers_upgrade_to_job_kinds(tmp_path):
    """A ledger at the revision before kinds keeps its jobs; they read back as txt2img."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "insert into batches (id, created_at, submitter, request_digest, spec, priority, model, recipe, "
            "base_seed, job_count, state) values ('b1', '2026-11-01 00:00:00', '', 'd', '{}', 0, 'tiny-sd', "
            "'lcm-lora', 1, 1, 'active')")
        conn.exec_driver_sql(
            "insert into jobs (batch_id, \"index\", prompt, negative_prompt, seed, steps, guidance, width, height, "
            "model, family, recipe, scheduler, scheduler_config, adapters, digest, state, priority, attempts, axes, "
            "created_at, queued_at) values ('b1', 0, 'old', '', 1, 4, 1.0, 64, 64, 'tiny-sd', 'sd15', 'lcm-lora', "
            "'LCMScheduler', '{}', '[]', 'x', 'queued', 0, 0, '{}', '2026-11-01 00:00:00', '2026-11-01 00:00:00')")
    engine.dispose()
    ledger = Ledger(url)  # migrates SQLite on first use
    try:
        [view] = ledger.list_jobs("b1")
        assert view.spec.kind == "txt2img" and view.prompt == "old"
    finally:
        ledger.close()


def test_a_worker_records_the_models_it_serves(ledger):
    ledger.register_worker(name="a", host="h", pid=1, device="cpu", gpu_name=None, versions={}, models=["tiny-sd"])
    ledger.register_worker(name="b", host="h", pid=2, device="cpu", gpu_name=None, versions={})
    a, b = ledger.workers()
    assert (a.models, a.serves("tiny-sd"), a.serves("tiny-sdxl")) == (["tiny-sd"], True, False)
    assert (b.models, b.serves("anything")) == (["*"], True)
    new = create(ledger, 2)
    assert ledger.unfinished_models(new.id) == {"tiny-sd"}


def test_the_peak_device_memory_is_kept_with_the_timings(ledger):
    new = create(ledger, 1)
    [claim] = ledger.claim(new.job_ids, worker="w1", device="cuda:0", lease_s=60)
    artifact = Artifact(store_url="file:///x", key="k.png", sha256="0" * 64, bytes=1, width=64, height=64,
                        content_type="image/png")
    ledger.complete(claim.job_id, claim.token, artifact=artifact, batch_size=4,
                    timings={"denoise_ms": 10.0, "peak_memory_mb": 6144.5})
    [view] = ledger.list_jobs(new.id)
    assert view.timings["peak_memory_mb"] == 6144.5 and view.timings["denoise"] == 10.0
    assert view.as_dict()["timings"]["peak_memory_mb"] == 6144.5


def test_a_micro_batch_completes_in_one_transaction_each_job_fenced(ledger):
    from farm.ledger import Completion

    new = create(ledger, 4)
    claims = ledger.claim(new.job_ids, worker="w1", device="cpu", lease_s=60)
    assert ledger.requeue(claims[2].job_id, claims[2].token, error="lease lapsed")  # superseded meanwhile

    def done(c):
        artifact = Artifact(store_url="file:///x", key=f"{c.job_id}.png", sha256="0" * 64, bytes=1, width=64,
                            height=64, content_type="image/png")
        return Completion(c.job_id, c.token, artifact, {"total_ms": 5.0}, 4)

    before = ledger.sql_counts.transactions
    assert ledger.complete_many([done(c) for c in claims]) == [True, True, False, True]
    assert ledger.sql_counts.transactions - before == 1
    states_ = [v.state for v in ledger.list_jobs(new.id)]
    assert states_ == ["succeeded", "succeeded", "queued", "succeeded"]
    assert [v.artifact is not None for v in ledger.list_jobs(new.id)] == [True, True, False, True]


@pytest.mark.postgres
def test_pooled_connections_killed_by_the_server_are_replaced_after_idling(postgres_url, monkeypatch):
    """A connection that sat idle is pinged before use: the server killed it (a restart, an idle
    timeout) and the ledger goes on unseen. One used moments ago is not pinged (issue 15: the
    ping doubled PostgreSQL's transactions on the hot path): the first use after the kill fails
    once, cleanly, and the pool's connections are replaced."""
    from sqlalchemy import text

    from farm.errors import InfrastructureError
    from farm.ledger import schema

    engine = make_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    ledger = Ledger(postgres_url)
    killer = make_engine(postgres_url)

    def kill_ledger_connections():
        with killer.connect() as conn:
            killed = conn.execute(text(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'"
            )).scalar()
        assert killed >= 1

    try:
        assert ledger.workers() == []
        kill_ledger_connections()
        monkeypatch.setattr(schema, "PING_AFTER_IDLE_S", 0.0)  # as if it had idled
        assert ledger.workers() == []  # pinged, replaced, answered
        kill_ledger_connections()
        monkeypatch.setattr(schema, "PING_AFTER_IDLE_S", 3600.0)  # used moments ago: not pinged
        with pytest.raises(InfrastructureError):
            ledger.workers()
        assert ledger.workers() == []  # the pool was renewed after the failure
    finally:
        ledger.close()
        killer.dispose()


def test_the_quick_schema_check_agrees_with_alembic(tmp_path):
    """Every CLI command checks the schema: it reads the head from the migration files instead of
    importing Alembic, and must name the same head Alembic does."""
    from farm.ledger.schema import head_from_files, stamped_revision

    assert head_from_files() == head_revision()
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert stamped_revision(engine) is None  # no alembic_version table yet
    upgrade(engine)
    assert stamped_revision(engine) == head_revision() == current_revision(engine)
    engine.dispose()
