"""Scaling: N worker processes with a renderer that sleeps a fixed time per image, against one
Redis and one PostgreSQL ledger. Efficiency = throughput(N) / (N x throughput(1)).

The sleep stands for GPU time: it uses no CPU, so N workers on a 2-core machine measure the
farm's coordination (broker, claims, completions, storage writes), not the machine's cores.

Each round first renders an untimed warm-up batch (one message per worker): the timed batch
measures the fleet's steady state, not its start-up. The jobs go out in messages of
``--micro-batch`` images (the farm's default, 8: one claim and one completion per message; 1 is
the worst case, every image a message of its own). The headline efficiency is on wall time from
the client's submit to the last image done (``efficiency_wall``); ``efficiency`` times the
workers' own span, first claim to last completion.

    .venv/bin/python bench/scaling.py [--workers 1,8,32] [--sleep 0.2] [--images-per-worker 40] [--micro-batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,8,32")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds per image")
    parser.add_argument("--images-per-worker", type=int, default=40)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.json"))
    args = parser.parse_args()

    import pgserver

    from farm.config import load_config
    from farm.fleet.dispatch import Publisher
    from farm.fleet.producer import submit
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger
    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-scaling-"))
    pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
    redis = servers.start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_RENDERER=f"sleep:{args.sleep}", FARM_QUEUE="scaling",
               FARM_DATABASE_URL=pg.get_uri(), FARM_BROKER_URL=redis.url,
               FARM_MICRO_BATCH=str(args.micro_batch))
    subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    cfg = load_config(env)
    ledger = Ledger(cfg.database_url)
    publisher = Publisher(cfg, redis.url)
    rng = random.Random(0)
    points = []
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", str(n), "--models",
                                     "tiny-sd", "--name-prefix", f"scale{n}"], env=env, cwd=ROOT,
                                    stdout=open(work / f"workers-{n}.log", "wb"), stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while len([w for w in ledger.workers() if w.name.startswith(f"scale{n}-") and w.state == "active"]) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{n} workers did not start")
                time.sleep(0.2)
            # warm-up, untimed: one message per worker, so every worker is consuming and has done
            # its first image's one-off work (a fleet's start-up, not its steady state)
            warm = plan([PromptRow(JobRequest(prompt=f"warm-up {n}"))], JobRequest(), variants=n * args.micro_batch,
                        seed=n * 1000 + 500, catalog=Catalog(), default_model="tiny-sd", rng=rng)
            warm_batch = submit(ledger, publisher, warm, micro_batch=args.micro_batch).batch
            while ledger.batch_counts(warm_batch)["succeeded"] < n * args.micro_batch:
                time.sleep(0.1)
            images = n * args.images_per_worker
            planned = plan([PromptRow(JobRequest(prompt=f"scaling {n}"))], JobRequest(), variants=images,
                           seed=n * 1000, catalog=Catalog(), default_model="tiny-sd", rng=rng)
            started = time.perf_counter()  # the client's submit: the batch written and published
            batch = submit(ledger, publisher, planned, micro_batch=args.micro_batch).batch
            while ledger.batch_counts(batch)["succeeded"] < images:
                time.sleep(0.05)
            wall = time.perf_counter() - started
            # the workers' throughput: first claim to last completion, from the ledger's own clock
            # (submitting 16x more jobs for 16 workers is the producer's time, not theirs)
            rows = ledger.list_jobs(batch)
            first = min(r.started_at for r in rows)
            last = max(r.finished_at for r in rows)
            elapsed = (last - first).total_seconds()
            spread = _per_worker(ledger, batch)
            points.append({"workers": n, "images": images, "seconds": round(elapsed, 3), "wall_s": round(wall, 3),
                           "images_per_s": round(images / elapsed, 3),
                           "images_per_s_wall": round(images / wall, 3), **spread})
            print(json.dumps(points[-1]), flush=True)
            proc.terminate()
            proc.wait(60)
            for w in ledger.workers():  # the next round counts only its own workers
                if w.name.startswith(f"scale{n}-"):
                    ledger.heartbeat(w.name, state="stopped")
    finally:
        publisher.close()
        ledger.close()
        redis.stop()
        pg.cleanup()
    base, base_wall = points[0]["images_per_s"], points[0]["images_per_s_wall"]
    for p in points:
        # the headline: from the client's submit to the last image done (what a user waits for);
        # beside it the workers' own span (first claim to last completion), the figure before issue 22
        p["efficiency_wall"] = round(p["images_per_s_wall"] / (p["workers"] * base_wall), 3)
        p["efficiency"] = round(p["images_per_s"] / (p["workers"] * base), 3)
    ideal = 1 / args.sleep
    result = {"benchmark": "scaling", "renderer": f"sleep:{args.sleep}", "micro_batch": args.micro_batch,
              "ledger": "postgresql (pgserver)",
              "broker": "redis", "ideal_images_per_s_per_worker": ideal, "points": points,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    save_lines(Path(args.out).with_suffix(".png"),
               {"efficiency, wall time from the submit": ([p["workers"] for p in points],
                                                          [p["efficiency_wall"] for p in points]),
                "efficiency, first claim to last completion": ([p["workers"] for p in points],
                                                               [p["efficiency"] for p in points])},
               xlabel="worker processes", ylabel="efficiency = tput(N) / (N x tput(1))", target=0.9, ylim=(0, 1.1),
               title=f"scaling, sleep {args.sleep}s per image, micro-batch {args.micro_batch}, PostgreSQL + Redis")
    print(json.dumps(result, indent=2))


def _per_worker(ledger, batch: str) -> dict:
    """Where a worker's time went: each worker's first claim after the batch's first, the fewest
    and most images one worker rendered (a late starter or an uneven share is the tail), and the
    median time from one claim of a worker to its next (a message: render + handover) and from a
    claim to its completion (render + store + record)."""
    import statistics

    from sqlalchemy import text

    with ledger.engine.connect() as conn:
        rows = conn.execute(text(
            "select a.worker, a.started_at, a.finished_at from attempts a join jobs j on j.id = a.job_id "
            "where j.batch_id = :b and a.outcome = 'succeeded'"), {"b": batch}).all()
    by_worker: dict[str, list] = {}
    for worker, started, finished in rows:
        by_worker.setdefault(worker, []).append((started, finished))
    firsts = [min(s for s, _ in v) for v in by_worker.values()]
    periods = []
    for claims in by_worker.values():
        starts = sorted({s for s, _ in claims})  # one claim time per message
        periods += [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
    return {"workers_seen": len(by_worker),
            "last_first_claim_s": round((max(firsts) - min(firsts)).total_seconds(), 3),
            "images_per_worker_min_max": [min(map(len, by_worker.values())), max(map(len, by_worker.values()))],
            "message_period_s_median": round(statistics.median(periods), 3) if periods else None,
            "claim_to_done_s_median": round(statistics.median([(f - s).total_seconds() for _, s, f in rows]), 3)}


if __name__ == "__main__":
    main()
