"""Fair share against FIFO on one replayable trace (issue 24).

The trace (``--scale 1`` is the issue's): 8 sleep workers serving two models, PostgreSQL and Redis
started here. Tenant A (weight 1) submits 10,000 jobs on model tiny-sd at t=0; tenant B (weight 2)
10,000 on tiny-sdxl at t=60 s; light tenants C, D and E (weight 1; C and E on tiny-sd, D on
tiny-sdxl) each submit a batch of 8 every 8 s for 5 minutes. The same trace runs with
``FARM_SCHEDULER=fifo`` (today's order: every micro-batch published at submission) and ``fair``.

Reported per scheduler, from the ledger:
- Jain's fairness index of weight-normalised GPU-seconds among the tenants backlogged through each
  60 s window (a tenant is backlogged when it had jobs waiting to start for >= 95% of the window);
- the light tenants' p95 queue wait (claim time - submission time) against one micro-batch's
  service time (the median pipeline call);
- total images/s (all images / first submission to last image) and images/s while the heavy
  tenants were backlogged; micro-batch fill; model switches per worker.
A plot of each tenant's images/s over time, FIFO and fair side by side, goes beside the JSON.
Premise checked: every job of the trace succeeded exactly once, no image was reused, 8 workers ran.

    .venv/bin/python bench/fairness.py [--scale 1.0] [--seconds 0.1] [--only fair|fifo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = {"a": 1.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 1.0}
MODELS = {"a": "tiny-sd", "b": "tiny-sdxl", "c": "tiny-sd", "d": "tiny-sdxl", "e": "tiny-sd"}
MICRO_BATCH = 8
WORKERS = 8


def trace(scale: float) -> list[tuple[float, str, int]]:
    """(seconds after the start, tenant, jobs) of every submission, in time order."""
    heavy = int(round(10_000 * scale))
    events = [(0.0, "a", heavy), (60.0 * scale, "b", heavy)]
    light_for = 300.0 * scale
    for i, tenant in enumerate("cde"):
        t = 1.0 + i * 8.0 / 3  # the three light tenants spread over the 8 s period
        while t < light_for:
            events.append((t, tenant, 8))
            t += 8.0
    return sorted(events)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 1.0


def run(scheduler: str, args, work: Path, pg, redis) -> dict:
    import farm
    from tests import servers

    database = pg.new_database(f"fair_{scheduler}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / f"home-{scheduler}"), FARM_DATABASE_URL=database, FARM_BROKER_URL=redis.url,
               FARM_RENDERER=f"sleep:{args.seconds}", FARM_QUEUE=f"fair{scheduler}", FARM_DEFAULT_MODEL="tiny-sd",
               FARM_MICRO_BATCH=str(MICRO_BATCH), FARM_SCHEDULER=scheduler, FARM_MAINTENANCE_S="5",
               FARM_NO_WORKER_WARN_S="0")
    subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    api = farm.Farm.connect(env)
    for tenant, weight in WEIGHTS.items():
        api.set_tenant(tenant, weight=weight)
    log = open(work / f"workers-{scheduler}.log", "ab")
    workers = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", str(WORKERS), "--models",
                                "tiny-sd,tiny-sdxl", "--name-prefix", f"fair{scheduler}"],
                               env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    batches: dict[str, list[str]] = {t: [] for t in WEIGHTS}
    accepted: dict[str, tuple[datetime, datetime]] = {}  # batch -> (submit called, submit returned)
    try:
        servers.wait_until(lambda: api.ledger.active_workers() >= WORKERS, 120, what="8 workers")
        events = trace(args.scale)
        seed = {"n": 1000}
        start = time.monotonic()
        started_at = datetime.now(timezone.utc)
        lock = threading.Lock()

        def submit(tenant: str, jobs: int) -> None:
            with lock:
                seed["n"] += 100_000
                base = seed["n"]
            asked = datetime.now(timezone.utc)
            planned = api.plan(f"tenant {tenant} product shot", model=MODELS[tenant], variants=jobs, seed=base,
                               size="64x64", steps=4)
            batch = api.submit_plan(planned, tenant=tenant).batch
            with lock:
                batches[tenant].append(batch)
                accepted[batch] = (asked, datetime.now(timezone.utc))

        threads = []
        for at, tenant, jobs in events:
            delay = at - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=submit, args=(tenant, jobs))  # a 10,000-job submit takes seconds
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        total = sum(jobs for _, _, jobs in events)
        servers.wait_until(lambda: _done(api) >= total, 3600, interval=1.0, what="the trace to finish")
        time.sleep(3)
        return analyse(scheduler, api, events, accepted, started_at, args)
    finally:
        workers.terminate()
        try:
            workers.wait(60)
        except subprocess.TimeoutExpired:
            workers.kill()
        api.close()


def _done(api) -> int:
    from sqlalchemy import text

    with api.ledger.engine.connect() as conn:
        return conn.execute(text("select count(*) from jobs where state in ('succeeded', 'failed', 'cancelled')")).scalar()


def analyse(scheduler: str, api, events, accepted, started_at: datetime, args) -> dict:
    from sqlalchemy import text

    with api.ledger.engine.connect() as conn:
        jobs = conn.execute(text(
            "select j.id, j.batch_id, b.tenant, j.model, j.state, j.created_at, j.started_at, j.finished_at, "
            "j.reused_from "
            "from jobs j join batches b on b.id = j.batch_id")).all()
        attempts = conn.execute(text(
            "select a.job_id, a.worker, a.started_at, a.finished_at, a.gpu_ms, a.batch_size, a.outcome, j.model, "
            "b.tenant from attempts a join jobs j on j.id = a.job_id join batches b on b.id = j.batch_id "
            "order by a.started_at, a.id")).all()
    # premise: the trace's work, each job once, nothing reused, every worker used
    expected = {t: sum(n for _, tenant, n in events if tenant == t) for t in WEIGHTS}
    got = {t: sum(1 for j in jobs if j.tenant == t) for t in WEIGHTS}
    assert got == expected, (got, expected)
    assert all(j.state == "succeeded" and j.reused_from is None for j in jobs), "a job failed or was reused"
    succeeded = [a for a in attempts if a.outcome == "succeeded"]
    assert len(succeeded) == len(jobs), f"{len(succeeded)} successful attempts for {len(jobs)} jobs"
    assert len({a.worker for a in attempts}) == WORKERS, "not every worker rendered"

    t0 = started_at

    def at(moment: datetime) -> float:
        return (moment - t0).total_seconds()

    end = max(at(j.finished_at) for j in jobs)
    # GPU-seconds per tenant per 60 s window, by finish time; backlog sampled every second
    window = 60.0 * args.scale if args.scale < 1 else 60.0
    n_windows = int(end // window) + 1
    gpu = {t: [0.0] * n_windows for t in WEIGHTS}
    for a in succeeded:
        gpu[a.tenant][min(n_windows - 1, int(at(a.finished_at) // window))] += (a.gpu_ms or 0.0) / 1000
    # a job is waiting from when its submission was accepted (the transaction that wrote it has
    # committed: a 10,000-job batch takes seconds to write, and nobody can dispatch it before)
    submitted = {t: sorted(at(accepted[j.batch_id][1]) for j in jobs if j.tenant == t) for t in WEIGHTS}
    claimed = {t: sorted(at(j.started_at) for j in jobs if j.tenant == t) for t in WEIGHTS}

    def waiting(tenant: str, moment: float) -> int:
        import bisect

        return bisect.bisect_right(submitted[tenant], moment) - bisect.bisect_right(claimed[tenant], moment)

    windows = []
    for w in range(n_windows):
        lo, hi = w * window, min((w + 1) * window, end)
        if hi - lo < window / 2:
            continue
        samples = [lo + i for i in range(int(hi - lo))]
        backlogged = [t for t in WEIGHTS if sum(waiting(t, s) > 0 for s in samples) >= 0.95 * len(samples)]
        normalised = [gpu[t][w] / WEIGHTS[t] for t in backlogged]
        windows.append({"from_s": lo, "to_s": hi, "backlogged": backlogged,
                        "gpu_seconds": {t: round(gpu[t][w], 1) for t in WEIGHTS},
                        "jain": round(jain(normalised), 4) if len(backlogged) >= 2 else None})
    # one micro-batch's service time: the median pipeline call (gpu_ms x images in it)
    calls: dict[tuple, list] = {}
    for a in succeeded:
        calls.setdefault((a.worker, a.started_at), []).append(a)
    service = statistics.median(sum((x.gpu_ms or 0) for x in call) / 1000 for call in calls.values())
    fill = statistics.mean(len(call) for call in calls.values()) / MICRO_BATCH
    light_waits = [at(j.started_at) - at(j.created_at) for j in jobs if j.tenant in "cde"]
    switches: dict[str, int] = {}
    moves = []  # (when, worker, from, to): where the switches happen
    for worker in sorted({a.worker for a in succeeded}):
        seq = [(at(started), call[0].model) for (w, started), call in sorted(calls.items(), key=lambda kv: kv[0][1])
               if w == worker]
        switches[worker] = 0
        for (_, x), (when, y) in zip(seq, seq[1:]):
            if x != y:
                switches[worker] += 1
                moves.append((round(when, 1), worker, x, y))
    heavy_end = max(at(j.finished_at) for j in jobs if j.tenant in "ab")
    heavy_images = sum(1 for j in jobs if at(j.finished_at) <= heavy_end)
    bins = 10.0 * (args.scale if args.scale < 1 else 1.0)
    series = {}
    for tenant in WEIGHTS:
        counts = [0] * (int(end // bins) + 1)
        for j in jobs:
            if j.tenant == tenant:
                counts[int(at(j.finished_at) // bins)] += 1
        series[tenant] = [c / bins for c in counts]
    judged = [w["jain"] for w in windows if w["jain"] is not None]
    submissions = {t: [] for t in WEIGHTS}
    for batch, (asked, done) in accepted.items():
        tenant = next(j.tenant for j in jobs if j.batch_id == batch)
        submissions[tenant].append(round((done - asked).total_seconds(), 2))
    return {
        "scheduler": scheduler,
        "jobs": len(jobs), "duration_s": round(end, 1),
        "windows": windows,
        "jain_min": min(judged) if judged else None,
        "light_wait_p95_s": round(percentile(light_waits, 0.95) or 0, 3),
        "light_wait_p50_s": round(percentile(light_waits, 0.5) or 0, 3),
        "micro_batch_service_s": round(service, 3),
        "images_per_s": round(len(jobs) / end, 2),
        "images_per_s_heavy_phase": round(heavy_images / heavy_end, 2),
        "heavy_done_s": round(heavy_end, 1),
        # the workers' time in pipeline calls over the heavy phase: what late dispatch could cost
        "utilisation_heavy_phase": round(sum((a.gpu_ms or 0) for a in succeeded if at(a.finished_at) <= heavy_end)
                                         / 1000 / (WORKERS * heavy_end), 4),
        "micro_batch_fill": round(fill, 4),
        "switches_per_worker": round(statistics.mean(switches.values()), 2),
        "submit_s": {t: {"max": max(v), "median": statistics.median(v)} for t, v in submissions.items() if v},
        "switches": switches,
        "switch_moments": sorted(moves),
        "throughput_series": {"bin_s": bins, "per_tenant": series},
    }


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [r for r in (results.get("fifo"), results.get("fair")) if r]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), sharey=True, squeeze=False)
    for ax, run_ in zip(axes[0], runs):
        bins = run_["throughput_series"]["bin_s"]
        for tenant, ys in run_["throughput_series"]["per_tenant"].items():
            ax.plot([i * bins for i in range(len(ys))], ys,
                    label=f"{tenant} (weight {WEIGHTS[tenant]:g}, {MODELS[tenant]})")
        ax.set_title(f"{run_['scheduler']}: Jain min {run_['jain_min']}, light p95 wait {run_['light_wait_p95_s']} s")
        ax.set_xlabel("seconds since A submitted")
        ax.set_ylabel("images/s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Shrink the trace (jobs and times); 1 = the issue's.")
    parser.add_argument("--seconds", type=float, default=0.1, help="Sleep per image (a micro-batch is 8 of them).")
    parser.add_argument("--only", choices=["fifo", "fair"], default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fairness.json"))
    args = parser.parse_args()

    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-fairness-"))
    pg = servers.start_postgres(work / "pg")
    redis = servers.start_redis(work / "redis")
    results: dict = {"trace": {"scale": args.scale, "seconds_per_image": args.seconds, "workers": WORKERS,
                               "micro_batch": MICRO_BATCH, "weights": WEIGHTS, "models": MODELS,
                               "submissions": len(trace(args.scale))},
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "load_before": os.getloadavg()}}
    try:
        for scheduler in ([args.only] if args.only else ["fifo", "fair"]):
            print(f"running {scheduler} ...", flush=True)
            results[scheduler] = run(scheduler, args, work, pg, redis)
            r = results[scheduler]
            print(f"  {scheduler}: Jain min {r['jain_min']}, light p95 wait {r['light_wait_p95_s']} s "
                  f"(service {r['micro_batch_service_s']} s), {r['images_per_s']} img/s "
                  f"({r['images_per_s_heavy_phase']} heavy phase), fill {r['micro_batch_fill']}, "
                  f"switches/worker {r['switches_per_worker']}", flush=True)
    finally:
        redis.stop()
        pg.stop()
    if "fifo" in results and "fair" in results:
        fifo, fair = results["fifo"], results["fair"]
        results["targets"] = {
            "jain_min_at_least_0.98": fair["jain_min"] is not None and fair["jain_min"] >= 0.98,
            "light_p95_at_most_2x_service": fair["light_wait_p95_s"] <= 2 * fair["micro_batch_service_s"],
            "images_per_s_at_least_97pct_of_fifo": fair["images_per_s"] >= 0.97 * fifo["images_per_s"],
            "heavy_phase_images_per_s_ratio":
                round(fair["images_per_s_heavy_phase"] / fifo["images_per_s_heavy_phase"], 3),
            "fill_at_least_95pct_of_fifo": fair["micro_batch_fill"] >= 0.95 * fifo["micro_batch_fill"],
            "switches_no_more_than_fifo": fair["switches_per_worker"] <= fifo["switches_per_worker"],
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if plot(results, out.with_suffix(".png")):
        print(f"plot: {out.with_suffix('.png')}")
    print(json.dumps(results.get("targets", {}), indent=2))


if __name__ == "__main__":
    main()
