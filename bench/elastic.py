"""An elastic fleet under a bursty trace (issue 26 item 5): the ledger's desired worker count drives
scale-ups and scale-downs of sleep workers while the trace renders, and nothing is lost or rendered
twice.

This script plays the autoscaler (KEDA and Kubernetes): every tick it asks ``Farm.desired_workers``
(the backlog in estimated GPU-seconds over the drain target, with its hysteresis) and starts worker
processes or stops them, most with SIGTERM (drain within FARM_STOP_GRACE_S, exit 0) and some with
kill -9 (the lease reaper hands their job on). Like KEDA's cooldownPeriod, the last workers go only
after the backlog has been zero for ``--cooldown`` seconds; like the maintenance CronJob, it runs
``farm reap`` every few seconds. PostgreSQL and Redis are real, started here; the store is a
directory.

Reported: scale events (worker starts and stops), lost and duplicated jobs (from the ledger:
states, attempts, artifacts; and from the store: every artifact's object there with its sha256, no
object without an artifact), the cold start (an idle farm at zero workers: the first job's
submission to its first image), worker-seconds spent against the ideal (the trace's GPU-seconds),
and each burst's drain time against the target.

    .venv/bin/python bench/elastic.py [--jobs 5000] [--bursts 24] [--sleep 0.25] [--drain 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "tiny-sd"


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    started: float
    stop_signal: int | None = None
    stopped_at: float | None = None
    ended: float | None = None
    exit_code: int | None = None


class Fleet:
    """Worker processes started and stopped one at a time, as a Deployment's pods are."""

    def __init__(self, env: dict, queues: str, log, rng: random.Random):
        self.env, self.queues, self.log, self.rng = env, queues, log, rng
        self.workers: list[Worker] = []
        self.events: list[tuple[float, str, str]] = []  # (time, "start"|"sigterm"|"kill", worker)
        self.serial = 0

    def running(self) -> list[Worker]:
        """Started and not asked to stop (a terminating pod is not counted, as in a Deployment)."""
        return [w for w in self.workers if w.stop_signal is None]

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.ended is None]

    def start(self, now: float) -> None:
        self.serial += 1
        name = f"elastic-{self.serial}@bench"
        proc = subprocess.Popen([sys.executable, "-m", "workers.main", "--name", name, "--queues", self.queues,
                                 "--loglevel", "WARNING"], env=self.env, cwd=ROOT, stdout=self.log,
                                stderr=subprocess.STDOUT)
        self.workers.append(Worker(name, proc, now))
        self.events.append((now, "start", name))

    def stop(self, now: float, kill: bool) -> None:
        # the youngest first, as a ReplicaSet scales down (a pod not yet ready, then the newest)
        victim = max(self.running(), key=lambda w: w.started)
        victim.stop_signal, victim.stopped_at = (signal.SIGKILL if kill else signal.SIGTERM), now
        try:
            victim.proc.send_signal(victim.stop_signal)
        except ProcessLookupError:
            pass
        self.events.append((now, "kill" if kill else "sigterm", victim.name))

    def poll(self, now: float) -> None:
        for w in self.alive():
            code = w.proc.poll()
            if code is not None:
                w.ended, w.exit_code = now, code
                if w.stop_signal is None:  # died on its own: a crash the scaler replaces
                    w.stop_signal, w.stopped_at = -1, now


def bursty_trace(rng: random.Random, jobs: int, bursts: int) -> list[tuple[str, float, int]]:
    """(when, seconds, jobs) per burst: a small first burst on an idle farm (the cold start), then
    sizes spread over a factor of three, each arriving either ``seconds`` after the fleet went back
    to zero workers ("idle": a cold start each time) or ``seconds`` after the previous burst was
    submitted ("busy": the fleet, part way down, grows again). Arrivals are tied to the fleet's
    state, not the clock, so the number of swings does not depend on how loaded the machine is."""
    first = min(16, jobs)
    weights = [rng.uniform(0.5, 1.5) for _ in range(bursts - 1)]
    sizes = [max(1, int((jobs - first) * w / sum(weights))) for w in weights]
    sizes[-1] += jobs - first - sum(sizes)
    rest = [("idle", rng.uniform(0.5, 3), n) if rng.random() < 0.65 else ("busy", rng.uniform(4, 8), n) for n in sizes]
    return [("idle", 0.0, first)] + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--bursts", type=int, default=24)
    parser.add_argument("--sleep", type=float, default=0.25, help="seconds a sleep worker takes per image")
    parser.add_argument("--drain", type=float, default=8.0, help="target drain time, seconds")
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--kill-fraction", type=float, default=0.2, help="scale-downs done with kill -9")
    parser.add_argument("--cooldown", type=float, default=3.0, help="zero backlog this long before going to zero")
    parser.add_argument("--tick", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "elastic.json"))
    args = parser.parse_args()

    import farm
    from tests import servers

    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="farm-elastic-"))
    pg = servers.start_postgres(work / "pg")
    redis = servers.start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_DATABASE_URL=pg.new_database("elastic"), FARM_BROKER_URL=redis.url,
               FARM_RENDERER=f"sleep:{args.sleep}", FARM_QUEUE="elasticbench", FARM_DEFAULT_MODEL=MODEL,
               FARM_MICRO_BATCH="1", FARM_LEASE_S="3", FARM_MAINTENANCE_S="1", FARM_RETRY_BACKOFF_S="1",
               FARM_STOP_GRACE_S="10", FARM_JOB_TIME_LIMIT="20", FARM_VISIBILITY_TIMEOUT="30",
               FARM_DRAIN_TARGET_S=str(int(args.drain)), FARM_DEVICE="cpu", CUDA_VISIBLE_DEVICES="",
               FARM_TORCH_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    os.environ.update({k: v for k, v in env.items() if k.startswith("FARM_")})
    client = farm.Farm.connect(env)
    log = open(work / "workers.log", "ab")
    fleet = Fleet(env, client.model_queues(MODEL), log, rng)
    trace = bursty_trace(rng, args.jobs, args.bursts)
    submitted: list[dict] = []
    timeline: list[tuple[float, float, int, int]] = []
    started = time.monotonic()
    try:
        seed, burst, zero_since, next_reap = 0, 0, None, started
        last_submit, idle_since = started, started
        while True:
            now = time.monotonic()
            idle_since = idle_since if not fleet.alive() else None
            while burst < len(trace) and now >= ((idle_since or float("inf")) if trace[burst][0] == "idle"
                                                 else last_submit) + trace[burst][1]:
                n = trace[burst][2]
                at_zero = not fleet.alive()
                result = client.submit_plan(client.plan("a red circle", model=MODEL, seeds=f"{seed}-{seed + n - 1}"))
                assert result.to_render == n, result  # fresh seeds: nothing reused
                submitted.append({"batch": result.batch, "jobs": n, "at": now - started, "at_zero_workers": at_zero})
                seed += n
                burst += 1
                last_submit, idle_since = now, None
            fleet.poll(now)
            if not fleet.alive() and idle_since is None:
                idle_since = now
            answer = client.desired_workers(MODEL, args.drain, maximum=args.max_workers,
                                            current=len(fleet.running()))
            desired = answer["desired"]
            if answer["jobs"] == 0:
                zero_since = zero_since or now
                if now - zero_since < args.cooldown:
                    desired = len(fleet.running())  # KEDA's cooldownPeriod before the last ones go
            else:
                zero_since = None
            while len(fleet.running()) < desired:
                fleet.start(now)
            while len(fleet.running()) > desired:
                fleet.stop(now, kill=rng.random() < args.kill_fraction)
            timeline.append((round(now - started, 2), answer["backlog_s"], len(fleet.running()), answer["desired"]))
            if now >= next_reap:  # the maintenance CronJob: at zero workers nobody else reaps
                client.reap()
                next_reap = now + 3
            if burst == len(trace) and answer["jobs"] == 0 and not fleet.alive():
                break
            if now - started > 1800:
                raise SystemExit("the trace did not drain within 30 minutes")
            time.sleep(args.tick)
        wall = time.monotonic() - started
    finally:
        for w in fleet.alive():
            w.proc.kill()
        client.close()
        log.close()
    try:
        result = audit(env, work, submitted, fleet, args, wall)
    finally:
        redis.stop()
        pg.stop()
    result["machine"] = {"node": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
                         "loadavg_before": [round(x, 2) for x in load_before],
                         "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                         "note": "GPU-less test machine, cores shared with other sessions' work"}
    result["timeline_every_10th_tick"] = timeline[::10]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("timeline_every_10th_tick", "bursts")}, indent=2))


def audit(env: dict, work: Path, submitted: list[dict], fleet: Fleet, args, wall: float) -> dict:
    """Every job of the trace succeeded exactly once, with its object in the store; and the numbers."""
    from sqlalchemy import text

    from farm.ledger.ledger import make_engine

    engine = make_engine(env["FARM_DATABASE_URL"])
    batches = [s["batch"] for s in submitted]
    with engine.connect() as conn:
        def rows(query: str):
            return conn.execute(text(query), {"b": batches}).all()

        jobs = rows("select id, state, batch_id, created_at, finished_at from jobs where batch_id = any(:b)")
        attempts = rows("select a.job_id, a.outcome, a.gpu_ms from attempts a join jobs j on j.id = a.job_id "
                        "where j.batch_id = any(:b)")
        artifacts = rows("select a.job_id, a.key, a.sha256, a.bytes from artifacts a join jobs j on j.id = a.job_id "
                         "where j.batch_id = any(:b)")
    engine.dispose()
    succeeded_attempts: dict[int, int] = {}
    outcomes: dict[str, int] = {}
    for job_id, outcome, _ in attempts:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "succeeded":
            succeeded_attempts[job_id] = succeeded_attempts.get(job_id, 0) + 1
    store = work / "home" / "store"
    objects = {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()}
    by_job = {job_id: (key, sha, size) for job_id, key, sha, size in artifacts}
    missing_or_corrupt = sum(1 for key, sha, size in by_job.values()
                             if key not in objects or hashlib.sha256((store / key).read_bytes()).hexdigest() != sha)
    not_succeeded = sum(1 for _, state, *_ in jobs if state != "succeeded")
    without_artifact = sum(1 for job_id, state, *_ in jobs if state == "succeeded" and job_id not in by_job)
    duplicate_successes = sum(n - 1 for n in succeeded_attempts.values() if n > 1)
    orphans = len(objects - {key for key, _, _ in by_job.values()})
    assert len(jobs) == args.jobs, (len(jobs), args.jobs)  # the premise: the whole trace was submitted
    # per burst: submission to its last image (drain) and, at zero workers, to its first (cold start)
    per_batch: dict[str, list] = {}
    for _, _state, batch, created, finished in jobs:
        per_batch.setdefault(batch, []).append((created, finished))
    bursts = []
    for s in submitted:
        times = per_batch[s["batch"]]
        created = times[0][0]
        finished = [f for _, f in times if f is not None]
        bursts.append({**s, "at": round(s["at"], 2), "drain_s": round((max(finished) - created).total_seconds(), 2),
                       "first_image_s": round((min(finished) - created).total_seconds(), 2)})
    cold = [b["first_image_s"] for b in bursts if b["at_zero_workers"]]
    drains = [b["drain_s"] for b in bursts]
    starts = sum(1 for _, kind, _ in fleet.events if kind == "start")
    sigterms = [w for w in fleet.workers if w.stop_signal == signal.SIGTERM]
    kills = [w for w in fleet.workers if w.stop_signal == signal.SIGKILL]
    crashed = [w for w in fleet.workers if w.stop_signal == -1]
    worker_s = sum((w.ended or w.started) - w.started for w in fleet.workers)
    ideal_s = args.jobs * args.sleep
    measured_gpu_s = sum(g or 0.0 for _, outcome, g in attempts if outcome == "succeeded") / 1000
    drain_grace = [w.ended - w.stopped_at for w in sigterms if w.ended is not None and w.stopped_at is not None]
    return {
        "benchmark": "elastic",
        "jobs": args.jobs, "burst_count": len(submitted), "sleep_s_per_image": args.sleep, "drain_target_s": args.drain,
        "max_workers": args.max_workers, "cooldown_s": args.cooldown, "wall_s": round(wall, 1),
        "scale_events": len(fleet.events),
        "scale_ups": starts, "scale_downs_sigterm": len(sigterms), "scale_downs_kill9": len(kills),
        "workers_crashed": len(crashed),
        "lost": not_succeeded + without_artifact + missing_or_corrupt,
        "duplicated": duplicate_successes + orphans,
        "lost_detail": {"not_succeeded": not_succeeded, "succeeded_without_artifact": without_artifact,
                        "artifact_object_missing_or_corrupt": missing_or_corrupt},
        "duplicated_detail": {"jobs_succeeded_twice": duplicate_successes, "objects_without_artifact": orphans,
                              "stored_objects": len(objects)},
        "attempts_by_outcome": outcomes,
        "sigterm_exit_codes": sorted({w.exit_code for w in sigterms if w.exit_code is not None}),
        "sigterm_exit_s": {"p50": round(statistics.median(drain_grace), 2), "max": round(max(drain_grace), 2)}
        if drain_grace else None,
        "cold_start_s": cold[0] if cold else None,
        "cold_starts_s": {"n": len(cold), "p50": round(statistics.median(cold), 2), "max": max(cold)} if cold else None,
        "worker_seconds": round(worker_s, 1), "ideal_worker_seconds": round(ideal_s, 1),
        "worker_seconds_over_ideal": round(worker_s / ideal_s, 2),
        "measured_gpu_seconds": round(measured_gpu_s, 1),
        "drain_s": {"p50": round(statistics.median(drains), 2), "max": max(drains),
                    "within_target": sum(1 for d in drains if d <= args.drain),
                    "within_target_plus_cold_start": sum(1 for b in bursts if b["drain_s"] <= args.drain + (
                        cold[0] if cold else 0))},
        "bursts": bursts,
    }


if __name__ == "__main__":
    main()
