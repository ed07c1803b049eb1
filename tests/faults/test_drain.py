"""Drain on SIGTERM as Kubernetes sends it (issue 26): the signal goes to the container's first
process, `farm worker`, which passes it on; the worker takes no new message, finishes its
micro-batch within FARM_STOP_GRACE_S or hands it back, stores what it rendered, releases its leases
and exits 0. A second SIGTERM is a kill: what runs is handed back and the status says so.

Real worker processes (tests/faults/harness.py), the sleep renderer, micro-batches of 4."""

from __future__ import annotations

import signal
import time

import pytest

from tests import servers
from tests.faults.harness import FaultFarm
from tests.faults.test_faults import report

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.workers]


@pytest.fixture
def fault_farm(tmp_path):
    redis = servers.start_redis(tmp_path / "redis")
    farms: list[FaultFarm] = []

    def make(**kwargs) -> FaultFarm:
        farms.append(FaultFarm(tmp_path, redis.url, **kwargs))
        return farms[-1]

    yield make
    for farm in farms:
        farm.close()
    redis.stop()
POD_GRACE_S = 20  # the pod's terminationGracePeriodSeconds in these tests: past it, a SIGKILL


def mid_micro_batch(farm, batch: str, into_s: float) -> None:
    """Wait until a micro-batch of 4 renders, then ``into_s`` seconds into it."""
    servers.wait_until(lambda: farm.counts(batch).get("running") == 4, 60, interval=0.02,
                       what="a micro-batch to start")
    time.sleep(into_s)


def attempt_outcomes(farm, batch: str) -> list[str]:
    return [o for (o,) in farm.sql("select a.outcome from attempts a join jobs j on j.id = a.job_id "
                                   "where j.batch_id = :b order by a.id", b=batch)]


def sigterm(farm, times: int = 1) -> tuple[int | None, float]:
    """SIGTERM the container's first process (``times`` of them); its status and how long it took."""
    signalled = time.monotonic()
    for _ in range(times):
        farm.supervisor.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    status = farm.supervisor.wait(POD_GRACE_S)
    return status, time.monotonic() - signalled


def finish_after_restart(farm, batch: str, n: int) -> dict:
    """A new pod takes over: every job succeeds once."""
    farm.start()
    farm.wait_done(batch, n, timeout=120)
    audit = farm.audit(batch)
    assert (audit["lost"], audit["duplicate_outputs"], audit["artifacts"]) == (0, 0, n)
    return audit


def readyz(port: int) -> int:
    """The worker's readiness probe, as the kubelet asks it: the HTTP status."""
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0  # nothing listens yet: the worker is starting


def test_sigterm_mid_micro_batch_finishes_it_within_the_grace_period(fault_farm):
    port = servers.free_port()
    farm = fault_farm(seconds=1.0, workers=1, extra={"FARM_MICRO_BATCH": "4", "FARM_STOP_GRACE_S": "15",
                                                     "FARM_METRICS_PORT": str(port)})
    farm.start()
    servers.wait_until(lambda: readyz(port) == 200, 60, interval=0.1, what="the worker to be ready")
    batch = farm.submit("finish what you started", 8)["batch"]
    mid_micro_batch(farm, batch, 1.0)  # 4 images of 1 s: about 3 s to go
    farm.supervisor.send_signal(signal.SIGTERM)
    # draining: no longer ready (a rolling update counts it out), still finishing its micro-batch
    servers.wait_until(lambda: readyz(port) == 503, 5, interval=0.05, what="the draining worker to be unready")
    status, took = sigterm(farm, times=0)
    counts = farm.counts(batch)
    outcomes = attempt_outcomes(farm, batch)
    # the micro-batch finished and was stored; the next one was never taken; no lease is held
    assert (status, counts.get("succeeded"), counts.get("queued"), counts.get("running")) == (0, 4, 4, None), counts
    assert outcomes == ["succeeded"] * 4
    assert took < 15 and "stopped (exit 0)" in farm.log_text()
    audit = finish_after_restart(farm, batch, 8)
    report("drain_finish", stop_s=round(took, 2), **audit)
    assert audit["extra_executions"] == 0  # nothing rendered twice, not even in part


def test_sigterm_past_the_grace_hands_the_micro_batch_back(fault_farm):
    farm = fault_farm(seconds=2.0, workers=1, extra={"FARM_MICRO_BATCH": "4", "FARM_STOP_GRACE_S": "1"})
    farm.start()
    batch = farm.submit("hand it back", 8)["batch"]
    mid_micro_batch(farm, batch, 0.5)  # 4 images of 2 s: far more than the 1 s of grace left
    status, took = sigterm(farm)
    counts = farm.counts(batch)
    assert (status, counts.get("queued"), counts.get("running")) == (0, 8, None), counts
    assert attempt_outcomes(farm, batch) == ["drained"] * 4  # handed back: no attempt used up
    assert took < POD_GRACE_S / 2 and "stopped (exit 0)" in farm.log_text()
    audit = finish_after_restart(farm, batch, 8)
    report("drain_hand_back", stop_s=round(took, 2), **audit)


def test_a_second_sigterm_is_a_kill_that_hands_back_at_once(fault_farm):
    farm = fault_farm(seconds=2.0, workers=1, extra={"FARM_MICRO_BATCH": "4", "FARM_STOP_GRACE_S": "60"})
    farm.start()
    batch = farm.submit("stop now", 8)["batch"]
    mid_micro_batch(farm, batch, 0.5)
    status, took = sigterm(farm, times=2)
    counts = farm.counts(batch)
    assert (status, counts.get("queued"), counts.get("running")) == (1, 8, None), counts
    assert took < 10 and "stopped (exit 1)" in farm.log_text()
    audit = finish_after_restart(farm, batch, 8)
    report("drain_kill", stop_s=round(took, 2), **audit)
