"""The events outbox (issue 25) on SQLite and PostgreSQL: every state change writes its events in
its own transaction, in commit order, and a batch's finish is reported exactly once, even when
many workers finish its last jobs at the same moment."""

from __future__ import annotations

import threading

import pytest

from farm.jobs import events as kinds
from farm.jobs import states
from farm.ledger import Artifact, Ledger
from farm.ledger.ledger import make_engine, upgrade
from farm.ledger.values import Completion
from tests.ledger.test_ledger import create


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        request.applymarker(pytest.mark.postgres)
        url = request.getfixturevalue("postgres_url")
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    opened = Ledger(url)
    yield opened
    opened.close()


def artifact(job_id: int) -> Artifact:
    return Artifact("file:///s", f"images/{job_id}.png", f"{job_id:064x}", 10, 64, 64, "image/png")


def types_of(ledger, after=0, **kw) -> list[str]:
    return [e.type for e in ledger.events_after(after, **kw)]


def test_a_batch_reports_accepted_each_job_and_finished_once(ledger):
    new = create(ledger, 4)
    claims = ledger.claim(new.job_ids[:3], worker="w", device="cpu", lease_s=60)
    assert ledger.complete_many([Completion(c.job.id, c.token, artifact(c.job.id), {}, 3) for c in claims[:2]])
    assert ledger.fail(claims[2].job.id, claims[2].token, error="boom")
    assert types_of(ledger) == [kinds.BATCH_ACCEPTED, kinds.JOB_SUCCEEDED, kinds.JOB_SUCCEEDED, kinds.JOB_FAILED]
    assert ledger.cancel(new.id) == 1
    got = ledger.events_after(0, batch=new.id)
    assert [e.type for e in got][-2:] == [kinds.JOB_CANCELLED, kinds.BATCH_FINISHED]
    assert [e.id for e in got] == sorted(e.id for e in got)
    succeeded = got[1]
    assert succeeded.tenant == "local" and succeeded.batch_id == new.id
    assert succeeded.body == {"job": claims[0].job.id, "batch": new.id, "index": 0, "seed": 100,
                              "key": f"images/{claims[0].job.id}.png", "sha256": f"{claims[0].job.id:064x}"}
    assert got[-1].body["counts"] == {"cancelled": 1, "failed": 1, "succeeded": 2} and got[-1].body["jobs"] == 4
    # a superseded completion changes nothing and reports nothing
    before = ledger.last_event_id()
    assert ledger.complete_many([Completion(claims[0].job.id, claims[0].token, artifact(1), {}, 1)]) == [False]
    assert ledger.last_event_id() == before
    ledger.retry(new.id)
    assert types_of(ledger, before) == [kinds.BATCH_RETRIED]


def test_a_lapsed_lease_reports_the_lost_worker(ledger):
    new = create(ledger, 1)
    [claim] = ledger.claim(new.job_ids, worker="w1", device="cpu", lease_s=60)
    assert ledger.requeue(claim.job.id, claim.token, error="lease lapsed", outcome=states.ATTEMPT_LOST)
    lost = ledger.events_after(0, kinds=[kinds.WORKER_LOST])
    assert len(lost) == 1 and lost[0].body["requeued"] is True and lost[0].body["job"] == claim.job.id


def test_events_are_filtered_by_tenant_and_batch(ledger):
    a, b = create(ledger, 1), create(ledger, 1, prompt="other")
    assert [e.batch_id for e in ledger.events_after(0, batch=b.id)] == [b.id]
    assert ledger.events_after(0, tenant="someone-else") == []
    assert len(ledger.events_after(0, tenant="local")) == 2 and a.id != b.id


def test_concurrent_completions_of_a_batch_report_its_finish_exactly_once(ledger):
    """Eight threads complete the last eight jobs at once: one of them sees the batch finished."""
    for _ in range(3):
        new = create(ledger, 8, prompt=f"race {_}")
        claims = ledger.claim(new.job_ids, worker="w", device="cpu", lease_s=60)
        barrier = threading.Barrier(len(claims))

        def finish(c, barrier=barrier):
            barrier.wait()
            ledger.complete_many([Completion(c.job.id, c.token, artifact(c.job.id), {}, 1)])

        threads = [threading.Thread(target=finish, args=(c,)) for c in claims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = ledger.events_after(0, batch=new.id)
        assert [e.type for e in got].count(kinds.BATCH_FINISHED) == 1
        assert got[-1].type == kinds.BATCH_FINISHED
