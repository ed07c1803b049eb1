"""Per-job overhead of the farm at zero backlog: queue + ledger + storage, with a renderer that
does nothing (FARM_RENDERER=sleep:0, no torch).

Jobs are submitted one at a time through the producer API (no CLI start-up in the numbers) and
each is waited for before the next. Per job: the ledger's created_at -> finished_at (publish,
Redis, claim, render(0), PNG encode, store write, completion commit), and the client-side round
trip. The anchor, measured in the same run: a bare Celery no-op round trip (apply_async + get,
Redis broker and result backend, solo pool) through the same Redis; the JSON has the ratio.

    .venv/bin/python bench/overhead.py [--jobs 300] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


ANCHOR_APP = """
from celery import Celery
import os
url = os.environ["ANCHOR_BROKER"]
app = Celery("anchor", broker=url, backend=url)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                worker_prefetch_multiplier=1, task_default_queue="anchor")


@app.task(name="anchor.noop")
def noop():
    return None
"""


def celery_round_trip_ms(broker: str, work: Path, rounds: int) -> list[float]:
    """The anchor: a bare Celery no-op round trip (apply_async + get) through the same Redis,
    Redis as the result backend, one solo-pool worker; the first 20 warm up."""
    (work / "anchor_app.py").write_text(ANCHOR_APP)
    env = {**os.environ, "ANCHOR_BROKER": broker, "PYTHONPATH": str(work)}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "anchor_app", "worker", "--pool=solo",
                               "--concurrency=1", "-Q", "anchor", "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "--loglevel=WARNING"], env=env, cwd=work,
                              stdout=open(work / "anchor.log", "wb"), stderr=subprocess.STDOUT)
    sys.path.insert(0, str(work))
    os.environ["ANCHOR_BROKER"] = broker
    try:
        import anchor_app

        anchor_app.noop.apply_async().get(timeout=120)  # the worker is up
        times = []
        for i in range(rounds + 20):
            started = time.perf_counter()
            anchor_app.noop.apply_async().get(timeout=30)
            if i >= 20:
                times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        worker.terminate()
        worker.wait(30)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()

    from farm.config import load_config
    from farm.fleet.dispatch import Publisher
    from farm.fleet.localfarm import ensure_redis, stop_redis
    from farm.fleet.producer import submit
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger

    work = Path(tempfile.mkdtemp(prefix="farm-overhead-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_RENDERER="sleep:0", FARM_QUEUE="overhead")
    pg = None
    if args.database == "postgres":
        import pgserver

        pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
        env["FARM_DATABASE_URL"] = pg.get_uri()
        subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
    cfg = load_config(env)
    ledger = Ledger(cfg.database_url)
    broker = ensure_redis(cfg)
    env["FARM_BROKER_URL"] = broker
    worker = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", "1", "--models", "tiny-sd"],
                              env=env, cwd=ROOT, stdout=open(work / "worker.log", "wb"), stderr=subprocess.STDOUT)
    publisher = Publisher(load_config(env), broker)
    rng = random.Random(0)
    server_ms, client_ms, stages = [], [], {"queue_wait": [], "image_encode": [], "upload": [], "total": []}
    try:
        while not ledger.workers():
            time.sleep(0.1)
        anchor_ms = celery_round_trip_ms(broker, work, args.jobs)  # measured first, the farm then
        for i in range(args.jobs + 20):  # the first 20 warm up the worker's connections
            planned = plan([PromptRow(JobRequest(prompt=f"overhead {i}"))], JobRequest(), variants=1, seed=i,
                           catalog=Catalog(), default_model="tiny-sd", rng=rng)
            started = time.perf_counter()
            batch = submit(ledger, publisher, planned, micro_batch=1).batch
            while ledger.batch_counts(batch)["succeeded"] < 1:
                time.sleep(0.005)  # polling harder would steal the CPU the worker needs
            elapsed = (time.perf_counter() - started) * 1000
            if i < 20:
                continue
            [job] = ledger.list_jobs(batch)
            server_ms.append((job.finished_at - job.created_at).total_seconds() * 1000)
            client_ms.append(elapsed)
            for stage in stages:
                stages[stage].append(job.timings[stage] or 0.0)
    finally:
        worker.terminate()
        worker.wait(30)
        publisher.close()
        ledger.close()
        stop_redis(cfg)
        if pg is not None:
            pg.cleanup()
    result = {
        "benchmark": "overhead", "renderer": "sleep:0 (no model)", "database": args.database, "jobs": args.jobs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "ledger_created_to_finished_ms": {"p50": round(statistics.median(server_ms), 2),
                                          "p99": round(percentile(server_ms, 0.99), 2)},
        "client_submit_to_seen_done_ms": {"p50": round(statistics.median(client_ms), 2),
                                          "p99": round(percentile(client_ms, 0.99), 2)},
        "stages_ms_p50": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "bare_celery_round_trip_ms": {"p50": round(statistics.median(anchor_ms), 2),
                                      "p99": round(percentile(anchor_ms, 0.99), 2)},
        "ratio_farm_over_celery_p50": round(statistics.median(server_ms) / statistics.median(anchor_ms), 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    ordered = sorted(server_ms)
    save_lines(Path(args.out).with_suffix(".png"),
               {"ledger created -> finished": ([100 * (i + 1) / len(ordered) for i in range(len(ordered))], ordered)},
               xlabel="percentile of jobs", ylabel="ms per job (no-op renderer)", log_x=False, target=5.0,
               title=f"per-job overhead, {args.database}, zero backlog")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
