"""The desired worker count (farm.fleet.scaling), a pure function, by its properties: monotone in
the backlog, zero at zero backlog, bounded, draining within the target once reached, and not
flapping (a decision holds while the backlog moves less than the hysteresis band); then the
backlog as the ledger reports it (SQLite here; tests/deploy runs KEDA's query on PostgreSQL)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from farm.fleet.costs import default_image_ms
from farm.fleet.scaling import HOLD, backlogs, desired_workers, drain_time_s, live_serving, needed, signals

backlog = st.floats(min_value=0, max_value=1e7, allow_nan=False)
drain = st.floats(min_value=1, max_value=86400, allow_nan=False)
per_worker = st.floats(min_value=0.25, max_value=8, allow_nan=False)
count = st.integers(min_value=0, max_value=500)
hold = st.floats(min_value=0, max_value=0.9, allow_nan=False)
maximum = st.one_of(st.none(), st.integers(min_value=0, max_value=500))


@given(backlog, backlog, drain, per_worker, count, hold, maximum)
def test_monotone_in_the_backlog(a, b, drain_s, per, current, band, cap):
    low, high = sorted((a, b))
    options = dict(drain_s=drain_s, per_worker=per, current=current, hold=band, maximum=cap)
    assert desired_workers(low, **options) <= desired_workers(high, **options)


@given(drain, per_worker, count, hold)
def test_zero_at_zero_backlog_whatever_runs_now(drain_s, per, current, band):
    assert desired_workers(0.0, drain_s=drain_s, per_worker=per, current=current, hold=band) == 0
    assert desired_workers(0.0, drain_s=drain_s, current=current, minimum=2) == 2  # a floor is kept


@given(backlog, drain, per_worker, count, count, count, hold)
def test_bounded_by_min_max_and_the_jobs(b, drain_s, per, current, low, high, band):
    assume(low <= high)
    got = desired_workers(b, drain_s=drain_s, per_worker=per, current=current, minimum=low, maximum=high, hold=band)
    assert low <= got <= high
    jobs = max(1, int(b) % 50)
    assert desired_workers(b, drain_s=drain_s, per_worker=per, current=current, hold=band, jobs=jobs) <= jobs / per + 1


@given(backlog, drain, per_worker, count, hold)
def test_the_count_reached_drains_within_the_target(b, drain_s, per, current, band):
    got = desired_workers(b, drain_s=drain_s, per_worker=per, current=current, hold=band)
    if b > 0:
        assert got >= 1
        assert drain_time_s(b, got, per) <= drain_s * (1 + 1e-9)
        # and it is not more than the hysteresis allows: the stricter target's count at most
        assert got <= needed(b, drain_s * (1 - band), per)


@given(backlog, drain, count, hold)
def test_a_reached_count_is_stable(b, drain_s, current, band):
    got = desired_workers(b, drain_s=drain_s, current=current, hold=band)
    assert desired_workers(b, drain_s=drain_s, current=got, hold=band) == got


@given(st.floats(min_value=1, max_value=1e6), drain, count, st.floats(min_value=0.05, max_value=0.9),
       st.floats(min_value=0, max_value=1))
def test_no_flapping_inside_the_band(b, drain_s, current, band, where):
    """After a scale-up the count holds while the backlog shrinks by less than the band; after a
    scale-down it holds while the backlog grows by less than the band (then a real rise adds)."""
    got = desired_workers(b, drain_s=drain_s, current=current, hold=band)
    if got > current:  # scaled up: a smaller backlog, down to b * (1 - band), keeps the count
        smaller = b * (1 - band * where)
        assert desired_workers(smaller, drain_s=drain_s, current=got, hold=band) == got
    if got < current:  # scaled down: a bigger backlog, up to b / (1 - band), keeps the count
        bigger = b / (1 - band) * (1 - 1e-9) ** 2 * (1 - where) + b * where
        assert desired_workers(bigger, drain_s=drain_s, current=got, hold=band) == got


def test_examples_and_refusals():
    # 900 GPU-s to drain in 300 s: 3 workers; a job cannot be split, so 2 jobs get 2 at most
    assert desired_workers(900, drain_s=300) == 3
    assert desired_workers(900, drain_s=300, jobs=2) == 2
    assert desired_workers(900, drain_s=300, per_worker=2) == 2
    # 5 running stay for 900 GPU-s (the stricter target, 240 s, needs 4: 5 is above it, so 4)
    assert desired_workers(900, drain_s=300, current=5) == 4
    assert desired_workers(900, drain_s=300, current=4) == 4  # between 3 and 4: kept
    assert desired_workers(900, drain_s=300, current=5, hold=0) == 3
    assert desired_workers(10, drain_s=300, maximum=0) == 0
    assert HOLD == 0.2
    for bad in ({"drain_s": 0}, {"drain_s": 1, "per_worker": 0}, {"drain_s": 1, "hold": 1.0},
                {"drain_s": 1, "current": -1}):
        with pytest.raises(ValueError):
            desired_workers(1.0, **bad)


def test_backlogs_fill_unknown_costs_with_the_default_and_name_asked_models():
    rows = [("tiny-sd", 64, 64, 4, 3, 300.0, 0), ("tiny-sd", 512, 512, 8, 2, 1000.0, 1),
            ("sdxl", 1024, 1024, 4, 1, 0.0, 1)]
    got = backlogs(rows, ["tiny-sd", "idle"])
    assert got["tiny-sd"].jobs == 5 and got["tiny-sd"].gpu_s == pytest.approx((1300 + default_image_ms(512, 512, 8)) / 1000)
    assert got["sdxl"].gpu_s == pytest.approx(default_image_ms(1024, 1024, 4) / 1000)
    assert (got["idle"].jobs, got["idle"].gpu_s) == (0, 0.0)


def test_live_serving_counts_active_workers_with_a_recent_heartbeat():
    from farm.ledger.values import WorkerInfo

    now = datetime.now(timezone.utc)

    def worker(name, state="active", age=1.0, models=("tiny-sd",)):
        return WorkerInfo(name=name, host="h", pid=1, device="cpu", gpu_name=None, started_at=now,
                          last_heartbeat=now - timedelta(seconds=age), state=state, resident_models=[],
                          resident_adapters=[], current_job=None, images_rendered=0, last_error=None, versions={},
                          models=list(models))
    fleet = [worker("a"), worker("b", models=("*",)), worker("c", state="draining"), worker("d", age=3600),
             worker("e", models=("sdxl",)), worker("f", state="stopped")]
    assert live_serving(fleet, "tiny-sd", now) == 2
    [signal] = signals([("tiny-sd", 64, 64, 4, 10, 1200.0, 0)], fleet, now, drain_s=1.0)
    assert (signal.model, signal.jobs, signal.gpu_s, signal.current, signal.desired) == ("tiny-sd", 10, 1.2, 2, 2)


def test_the_ledger_backlog_counts_waiting_and_rendering_jobs_of_active_batches(tmp_path):
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        def create(model, n, cost_ms):
            p = plan([PromptRow(JobRequest(prompt="a lighthouse"))], JobRequest(), variants=n, seed=1,
                     catalog=Catalog(), default_model=model, rng=random.Random(0))
            return ledger.create_batch(specs=p.specs, spec=p.record(), request_digest=p.request_digest,
                                       base_seed=p.base_seed, idempotency_key=None,
                                       costs_ms=None if cost_ms is None else [cost_ms] * n)
        first = create("tiny-sd", 4, 250.0)
        create("tiny-sd", 2, None)  # no estimate recorded: the default for its size counts
        paused = create("tiny-sdxl", 3, 100.0)
        rows = ledger.backlog_rows()
        spec = ledger.list_jobs(first.id)[0].job.spec
        got = backlogs(rows)
        assert got["tiny-sd"].jobs == 6
        assert got["tiny-sd"].gpu_s == pytest.approx((4 * 250 + 2 * default_image_ms(spec.width, spec.height,
                                                                                    spec.steps)) / 1000)
        assert got["tiny-sdxl"].gpu_s == pytest.approx(0.3)
        ledger.set_batch_state(paused.id, "paused")  # a paused batch waits for no worker
        assert "tiny-sdxl" not in backlogs(ledger.backlog_rows())
        with ledger.session() as s:  # one renders, one is done: the done one leaves the backlog
            from sqlalchemy import update

            from farm.ledger.models import Job

            s.execute(update(Job).where(Job.id == first.job_ids[0]).values(state="running"))
            s.execute(update(Job).where(Job.id == first.job_ids[1]).values(state="succeeded"))
        assert backlogs(ledger.backlog_rows(["tiny-sd"]))["tiny-sd"].jobs == 5
    finally:
        ledger.close()


def submitted(home, model: str, n: int, cost_ms: float | None) -> str:
    """A batch written straight to the farm home's ledger, as `farm submit` would with no broker."""
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger

    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    try:
        p = plan([PromptRow(JobRequest(prompt="a red circle"))], JobRequest(), variants=n, seed=1, catalog=Catalog(),
                 default_model=model, rng=random.Random(0))
        return ledger.create_batch(specs=p.specs, spec=p.record(), request_digest=p.request_digest,
                                   base_seed=p.base_seed, idempotency_key=None,
                                   costs_ms=None if cost_ms is None else [cost_ms] * n).id
    finally:
        ledger.close()


def test_farm_fleet_desired_and_backlog(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from farm.cli import cli

    home = tmp_path / "home"
    home.mkdir()
    for key in [k for k in __import__("os").environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FARM_HOME", str(home))
    submitted(home, "tiny-sd", 40, 30_000.0)  # 1,200 GPU-s

    def run(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    answer = run("fleet", "desired", "--model", "tiny-sd", "--drain", "5m", "--json")
    assert answer.exit_code == 0, answer.stderr
    assert json.loads(answer.stdout) == {"model": "tiny-sd", "jobs": 40, "backlog_s": 1200.0, "drain_s": 300.0,
                                         "per_worker": 1.0, "current": 0, "desired": 4, "drain_at_desired_s": 300.0}
    answer = run("fleet", "desired", "--model", "tiny-sd", "--drain", "300s", "--current", "5", "--max", "8")
    assert answer.exit_code == 0 and "5 worker(s) now, 5 desired" in answer.stdout  # 5 <= 1200/240: kept
    answer = run("fleet", "backlog", "--json")
    assert json.loads(answer.stdout) == [{"model": "tiny-sd", "jobs": 40, "backlog_s": 1200.0}]
    monkeypatch.setenv("FARM_DRAIN_TARGET_S", "600")  # the default target
    assert json.loads(run("fleet", "desired", "--model", "tiny-sd", "--json").stdout)["desired"] == 2
    for args, words in ((["--model", "nope"], "unknown model 'nope'"), (["--model", "tiny-sd", "--drain", "soon"],
                                                                        "expected a duration"),
                        (["--model", "tiny-sd", "--min", "3", "--max", "2"], "below --min")):
        answer = run("fleet", "desired", *args)
        assert answer.exit_code == 2 and answer.stderr.count("\n") == 1 and words in answer.stderr, answer.stderr


def test_the_worker_metrics_report_the_backlog_and_desired_workers(tmp_path):
    import urllib.request
    from types import SimpleNamespace

    from farm.ledger import Ledger
    from tests import servers
    from workers.metrics import WorkerMetrics
    from workers.runtime import backlog_signals

    home = tmp_path / "home"
    home.mkdir()
    submitted(home, "tiny-sd", 10, 90_000.0)  # 900 GPU-s: 3 workers for a 300 s drain
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    reads = {"n": 0, "fail": False}
    clock = {"t": 0.0}

    def read():
        reads["n"] += 1
        if reads["fail"]:
            raise OSError("the ledger is gone")
        return backlog_signals(ledger, SimpleNamespace(drain_target_s=300), ["tiny-sdxl"])

    metrics = WorkerMetrics("farm-cpu0@test")
    metrics.watch_backlog(read, ttl_s=10, clock=lambda: clock["t"])
    port = servers.free_port()
    metrics.serve(port)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    try:
        text = servers.wait_until(scrape, 10, what="the metrics endpoint")
        for line in ('farm_backlog_gpu_seconds{model="tiny-sd"} 900.0', 'farm_backlog_jobs{model="tiny-sd"} 10.0',
                     'farm_desired_workers{model="tiny-sd"} 3.0', 'farm_serving_workers{model="tiny-sd"} 0.0',
                     'farm_desired_workers{model="tiny-sdxl"} 0.0'):  # its own model, at zero
            assert line in text, text
        scrape()
        assert reads["n"] == 1  # within the TTL a scrape reuses the reading
        clock["t"] = 11.0
        reads["fail"] = True
        text = scrape()  # a ledger that cannot be read: no gauges, the endpoint lives
        assert reads["n"] == 2 and "farm_desired_workers{" not in text and "farm_jobs_total" in text
    finally:
        ledger.close()
