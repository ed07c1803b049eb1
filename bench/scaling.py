"""Scaling: N worker processes with a renderer that sleeps a fixed time per image, against one
Redis and one PostgreSQL ledger. Efficiency = throughput(N) / (N x throughput(1)).

The sleep stands for GPU time: it uses no CPU, so N workers on a 2-core machine measure the
farm's coordination (broker, claims, completions, storage writes), not the machine's cores.

    .venv/bin/python bench/scaling.py [--workers 1,2,4,8,16] [--sleep 0.2] [--images-per-worker 20]
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
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds per image")
    parser.add_argument("--images-per-worker", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.json"))
    args = parser.parse_args()

    import pgserver

    from farm.config import load_config
    from farm.dispatch import Publisher
    from farm.ledger import Ledger
    from farm.producer import plan, submit
    from farm.spec import Catalog, JobRequest
    from farm.variants import PromptRow
    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-scaling-"))
    pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
    redis = servers.start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_RENDERER=f"sleep:{args.sleep}", FARM_QUEUE="scaling",
               FARM_DATABASE_URL=pg.get_uri(), FARM_BROKER_URL=redis.url, FARM_MICRO_BATCH="1")
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
            time.sleep(1.0)  # let every worker finish subscribing
            images = n * args.images_per_worker
            planned = plan([PromptRow(JobRequest(prompt=f"scaling {n}"))], JobRequest(), variants=images,
                           seed=n * 1000, catalog=Catalog(), default_model="tiny-sd", rng=rng)
            started = time.perf_counter()
            batch = submit(ledger, publisher, planned, micro_batch=1).batch
            while ledger.batch_counts(batch)["succeeded"] < images:
                time.sleep(0.05)
            wall = time.perf_counter() - started
            # the workers' throughput: first claim to last completion, from the ledger's own clock
            # (submitting 16x more jobs for 16 workers is the producer's time, not theirs)
            rows = ledger.list_jobs(batch)
            first = min(r.started_at for r in rows)
            last = max(r.finished_at for r in rows)
            elapsed = (last - first).total_seconds()
            points.append({"workers": n, "images": images, "seconds": round(elapsed, 3), "wall_s": round(wall, 3),
                           "images_per_s": round(images / elapsed, 3)})
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
    base = points[0]["images_per_s"]
    for p in points:
        p["efficiency"] = round(p["images_per_s"] / (p["workers"] * base), 3)
    ideal = 1 / args.sleep
    result = {"benchmark": "scaling", "renderer": f"sleep:{args.sleep}", "ledger": "postgresql (pgserver)",
              "broker": "redis", "ideal_images_per_s_per_worker": ideal, "points": points,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    save_lines(Path(args.out).with_suffix(".png"),
               {"efficiency": ([p["workers"] for p in points], [p["efficiency"] for p in points])},
               xlabel="worker processes", ylabel="efficiency = tput(N) / (N x tput(1))", target=0.9, ylim=(0, 1.1),
               title=f"scaling, sleep {args.sleep}s per image, PostgreSQL + Redis")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
