"""The local farm heals itself: `farm run` restarts workers that died under it, leaves nothing
running when it is itself stopped or killed, and a wait with no live worker says so.

Real processes throughout (the CLI, the worker supervisor, Celery workers, the private Redis) with
the sleep renderer, so a job takes a known time and no torch is loaded; leases are short, so a job
whose worker died comes back quickly through the reaper.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.results.progress import NoWorkerNotice
from tests import servers

ROOT = Path(__file__).resolve().parents[1]
RESTART_LINE = "farm: the local workers died (supervisor pid {pid}); restarting them"


@pytest.fixture
def sleepy_env(farm_env):
    """Jobs of 0.5 s, one per message; a lapsed lease is reaped within about 4 s."""
    return {**farm_env, "FARM_RENDERER": "sleep:0.5", "FARM_MICRO_BATCH": "1", "FARM_LEASE_S": "3",
            "FARM_MAINTENANCE_S": "1", "FARM_RETRY_BACKOFF_S": "1"}


def sql(env, query: str, **params) -> list:
    path = Path(env["FARM_HOME"]) / "ledger.db"
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute(query, params).fetchall()


def run_in_background(env, tmp_path, n: int) -> tuple[subprocess.Popen, Path]:
    errors = tmp_path / "run.stderr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "run", "a fox in snow", "--model", "tiny-sd", "--variants", str(n),
         "--seed", "0", "--out", str(tmp_path / "out"), "--timeout", "180", "--json"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors.open("w"), text=True)
    return proc, errors


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    import psutil

    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mid_batch(env):
    """Some jobs done, one running: the moment to kill something."""
    try:
        counts = dict(sql(env, "select state, count(*) from jobs group by state"))
    except sqlite3.OperationalError:  # `farm run` has created the file but not migrated it yet
        return False
    return counts.get("succeeded", 0) >= 2 and counts.get("running", 0) >= 1


@pytest.mark.workers
@pytest.mark.redis
def test_farm_run_restarts_its_workers_when_their_supervisor_is_killed(sleepy_env, tmp_path):
    run_dir = Path(sleepy_env["FARM_HOME"]) / "run"
    proc, errors = run_in_background(sleepy_env, tmp_path, 12)
    try:
        servers.wait_until(lambda: mid_batch(sleepy_env), 90, interval=0.05, what="the batch to be half way")
        supervisor = pid_in(run_dir / "workers.pid")
        os.kill(supervisor, signal.SIGKILL)  # its workers die with it (PR_SET_PDEATHSIG)
        out, _ = proc.communicate(timeout=150)
    finally:
        servers.terminate(proc)
    stderr = errors.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert RESTART_LINE.format(pid=supervisor) in stderr.splitlines()
    report = json.loads(out)
    assert (report["jobs"], report["succeeded"], len(report["outputs"])) == (12, 12, 12)

    # every job succeeded exactly once: the one the dead worker held came back through the reaper
    outcomes = sql(sleepy_env, "select job_id, outcome from attempts")
    succeeded = [job for job, outcome in outcomes if outcome == "succeeded"]
    assert sorted(succeeded) == sorted(job for (job,) in sql(sleepy_env, "select id from jobs"))
    assert "lost" in {outcome for _, outcome in outcomes}
    assert sql(sleepy_env, "select count(*) from artifacts") == [(12,)]
    # and the restarted farm was stopped like the first would have been
    assert not (run_dir / "workers.pid").exists() and not alive(pid_in(run_dir / "redis.pid"))


@pytest.mark.workers
@pytest.mark.redis
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_or_killed_farm_run_leaves_nothing_running(sleepy_env, tmp_path, sig):
    """SIGTERM: `farm run` stops what it started on its way out. SIGKILL: nothing of it runs any
    more, so the supervisor notices its owner is gone and stops the workers and the private Redis."""
    import psutil

    run_dir = Path(sleepy_env["FARM_HOME"]) / "run"
    proc, errors = run_in_background(sleepy_env, tmp_path, 12)
    try:
        servers.wait_until(lambda: mid_batch(sleepy_env), 90, interval=0.05, what="the batch to be half way")
        supervisor, redis = pid_in(run_dir / "workers.pid"), pid_in(run_dir / "redis.pid")
        workers = [p.pid for p in psutil.Process(supervisor).children()]
        assert workers and alive(redis)
        proc.send_signal(sig)
        proc.wait(90)
    finally:
        servers.terminate(proc)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), errors.read_text()[-3000:]
    started = [supervisor, redis, *workers]
    servers.wait_until(lambda: not any(alive(pid) for pid in started), 60, interval=0.1,
                       what="the supervisor, its workers and the private Redis to stop")
    assert not (run_dir / "workers.pid").exists()
    # what ran was handed back, not lost: nothing is left running in the ledger
    assert sql(sleepy_env, "select count(*) from jobs where state = 'running'") == [(0,)]


@pytest.mark.redis
def test_status_watch_says_when_no_live_worker_is_there(farm_env, tmp_path, redis_server, capsys):
    """No worker at all, then a worker whose heartbeats stopped: `farm status --watch` (and
    `Farm.wait`) say so after the grace period instead of waiting in silence."""
    env = {**farm_env, "FARM_BROKER_URL": redis_server.url, "FARM_QUEUE": f"q{tmp_path.name[-12:]}",
           "FARM_NO_WORKER_WARN_S": "1"}
    batch = json.loads(subprocess.run(
        [sys.executable, "-m", "farm.cli", "submit", "nobody renders this", "--model", "tiny-sd", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout)["batch"]

    def watch_until_notice() -> tuple[str, float]:
        errors = tmp_path / "watch.stderr"
        began = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "status", batch, "--watch"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=errors.open("w"))
        try:
            servers.wait_until(lambda: "no live worker" in errors.read_text(), 30, interval=0.1,
                               what="the no-live-worker notice")
            seen = time.monotonic() - began
            time.sleep(2.5)  # said once, not once per poll
            assert proc.poll() is None  # and it keeps waiting: a worker may still come
        finally:
            servers.terminate(proc)
        [line] = [line for line in errors.read_text().splitlines() if "no live worker" in line]
        return line, seen

    line, seen = watch_until_notice()
    assert line.startswith(f"farm: no live worker to render batch {batch} for ")
    assert "no worker has registered with this ledger" in line and "`farm up`" in line
    assert seen < 15  # 1 s of grace, plus starting Python

    from farm.ledger import Ledger

    stale = Ledger(f"sqlite:///{farm_env['FARM_HOME']}/ledger.db",
                   clock=lambda: datetime.now(timezone.utc) - timedelta(minutes=5))
    stale.register_worker(name="farm-cpu0@gone", host="gone", pid=1, device="cpu", gpu_name=None, versions={})
    stale.close()
    line, _ = watch_until_notice()
    assert re.search(r"farm-cpu0@gone lost \(last heartbeat 3\d\ds ago\)", line), line

    import farm

    with farm.Farm.connect(env) as f, pytest.raises(farm.FarmTimeout) as timed_out:
        f.wait(batch, timeout=3)
    assert timed_out.value.counts["queued"] == 1
    assert f"farm: no live worker to render batch {batch}" in capsys.readouterr().err


def worker(state: str, beat_s_ago: float, now: datetime):
    return SimpleNamespace(name=f"w-{state}", state=state, last_heartbeat=now - timedelta(seconds=beat_s_ago))


def test_no_worker_notice_waits_its_grace_says_once_and_rearms():
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    clock = SimpleNamespace(t=0.0)
    notice = NoWorkerNotice("b1", grace_s=10, clock=lambda: clock.t)
    assert notice([], now) is None
    clock.t = 9.9
    assert notice([worker("cordoned", 1, now)], now) is None  # within the grace period
    clock.t = 10.0
    line = notice([worker("cordoned", 1, now)], now)
    assert line and "w-cordoned cordoned" in line
    clock.t = 30.0
    assert notice([worker("active", 100, now)], now) is None  # lost, but said already
    assert notice([worker("active", 5, now)], now) is None  # a live one: re-armed
    clock.t = 31.0
    assert notice([worker("stopped", 1, now)], now) is None
    clock.t = 41.0
    assert "w-stopped stopped" in notice([worker("stopped", 1, now)], now)


def test_a_live_worker_that_serves_other_models_does_not_count():
    from farm.ledger.values import WorkerInfo

    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    clock = SimpleNamespace(t=0.0)

    def info(models):
        return WorkerInfo(name="farm-cpu0@h", host="h", pid=1, device="cpu", gpu_name=None, started_at=now,
                          last_heartbeat=now, state="active", resident_models=[], resident_adapters=[],
                          current_job=None, images_rendered=0, last_error=None, versions={}, models=models)

    notice = NoWorkerNotice("b1", grace_s=5, clock=lambda: clock.t)
    assert notice([info(["tiny-sdxl"])], now, {"tiny-sd"}) is None  # the grace period starts
    clock.t = 6.0
    line = notice([info(["tiny-sdxl"])], now, {"tiny-sd"})
    assert line and "no live worker serves tiny-sd" in line and "--models tiny-sd" in line
    notice.reset()
    assert notice([info(["tiny-sd", "tiny-sdxl"])], now, {"tiny-sd"}) is None
    clock.t = 20.0
    assert notice([info(["*"])], now, {"tiny-sd"}) is None  # serves every model
    assert notice([], now, set()) is None  # nothing left to render: nothing to say


@pytest.mark.workers
@pytest.mark.redis
def test_farm_up_restarts_its_private_redis_after_kill_9_mid_batch(sleepy_env, tmp_path):
    """The supervisor `farm up` leaves in the background watches the private Redis: killed with
    SIGKILL mid-batch, it is started again (and the log says so), the workers reconnect, and every
    job succeeds once, with no second `farm up`."""
    env = {**sleepy_env, "FARM_RENDERER": "sleep:0.2"}
    run_dir = Path(env["FARM_HOME"]) / "run"

    def farm(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=120).stdout

    farm("up", "--workers", "2")
    try:
        n = 40
        submitted = json.loads(farm("submit", "a heron at dusk", "--model", "tiny-sd", "--variants", str(n),
                                    "--seed", "0", "--json"))
        assert submitted["jobs"] == n
        servers.wait_until(lambda: mid_batch(env), 90, interval=0.05, what="the batch to be under way")
        redis, supervisor = pid_in(run_dir / "redis.pid"), pid_in(run_dir / "workers.pid")
        os.kill(redis, signal.SIGKILL)
        killed_at = time.monotonic()
        restarted = servers.wait_until(lambda: pid_in(run_dir / "redis.pid") != redis and alive(
            pid_in(run_dir / "redis.pid")), 30, interval=0.1, what="the private Redis to be restarted")
        assert restarted
        servers.wait_until(lambda: sql(env, "select count(*) from jobs where state = 'succeeded'") == [(n,)], 150,
                           interval=0.25, what="every job to succeed after the Redis restart")
        recovered_s = time.monotonic() - killed_at
        log = (run_dir / "workers.log").read_text()
        assert "[farm] the private Redis died; restarted it on " in log, log[-3000:]
        assert pid_in(run_dir / "workers.pid") == supervisor  # the same supervisor: nobody ran `farm up`
        succeeded = [job for job, outcome in sql(env, "select job_id, outcome from attempts") if outcome == "succeeded"]
        assert sorted(succeeded) == sorted(job for (job,) in sql(env, "select id from jobs"))  # each once
        assert sql(env, "select count(*) from artifacts") == [(n,)]
        print(f"\nREDIS kill -9 under farm up: {n} jobs succeeded once, {recovered_s:.1f}s after the kill")
    finally:
        subprocess.run([sys.executable, "-m", "farm.cli", "down"], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert not alive(pid_in(run_dir / "redis.pid")) and not alive(supervisor)
