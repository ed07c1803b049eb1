"""Storing while rendering: images/s with the store pool overlapping the next micro-batch's render
(FARM_STORE_OVERLAP=1, the default) against storing before the next message (=0), side by side.

The renderer sleeps a fixed time per image (it stands for the GPU: it uses no CPU) and returns
textured pixels, so PNG encoding costs what it costs for a rendered image of that size. At
SDXL's 1024x1024 a PNG takes tens of milliseconds to encode: without overlap that time adds to
every micro-batch; with it, it hides behind the next render.

    .venv/bin/python bench/store_overlap.py [--size 1024] [--sleep 0.1] [--images 64] [--rounds 3]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds of 'GPU' per image")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "store_overlap.json"))
    args = parser.parse_args()

    from farm.config import load_config
    from farm.fleet.dispatch import Publisher
    from farm.fleet.producer import submit
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger
    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-overlap-"))
    redis = servers.start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_RENDERER=f"sleep:{args.sleep}", FARM_QUEUE="overlap",
               FARM_BROKER_URL=redis.url, FARM_MICRO_BATCH=str(args.micro_batch))
    cfg = load_config(env)
    ledger = Ledger(cfg.database_url)
    publisher = Publisher(cfg, redis.url)
    rng = random.Random(0)
    runs: dict[str, list[dict]] = {"overlap": [], "no_overlap": []}
    try:
        for round_ in range(args.rounds):
            for mode in ("no_overlap", "overlap") if round_ % 2 == 0 else ("overlap", "no_overlap"):
                name = f"{mode.replace('_', '-')}-{round_}"
                proc = subprocess.Popen(
                    [sys.executable, "-m", "farm.cli", "worker", "--workers", "1", "--models", "tiny-sd",
                     "--name-prefix", name],
                    env={**env, "FARM_STORE_OVERLAP": "1" if mode == "overlap" else "0"}, cwd=ROOT,
                    stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
                while not [w for w in ledger.workers() if w.name.startswith(name) and w.state == "active"]:
                    time.sleep(0.1)
                time.sleep(1.0)
                planned = plan([PromptRow(JobRequest(prompt=f"overlap {name}", width=args.size, height=args.size))],
                               JobRequest(), variants=args.images, seed=round_ * 1000, catalog=Catalog(),
                               default_model="tiny-sd", rng=rng)
                batch = submit(ledger, publisher, planned, micro_batch=args.micro_batch).batch
                while ledger.batch_counts(batch)["succeeded"] < args.images:
                    time.sleep(0.05)
                rows = ledger.list_jobs(batch)
                first = min(r.started_at for r in rows)
                last = max(r.finished_at for r in rows)
                seconds = (last - first).total_seconds()
                encode = statistics.median(r.timings["image_encode"] for r in rows)
                point = {"round": round_, "images": args.images, "seconds": round(seconds, 3),
                         "images_per_s": round(args.images / seconds, 3), "png_encode_ms_p50": round(encode, 1)}
                runs[mode].append(point)
                print(json.dumps({mode: point}), flush=True)
                proc.terminate()
                proc.wait(60)
                ledger.heartbeat([w.name for w in ledger.workers() if w.name.startswith(name)][0], state="stopped")
    finally:
        publisher.close()
        ledger.close()
        redis.stop()
    median = {mode: statistics.median(p["images_per_s"] for p in points) for mode, points in runs.items()}
    result = {
        "benchmark": "store_overlap", "renderer": f"sleep:{args.sleep} (stands for the GPU)",
        "size": f"{args.size}x{args.size}", "micro_batch": args.micro_batch, "images_per_round": args.images,
        "rounds": args.rounds, "io_threads": cfg.io_threads, "runs": runs,
        "images_per_s_median": median, "ratio_overlap_over_no_overlap": round(median["overlap"] / median["no_overlap"], 3),
        "ideal_images_per_s": round(1 / args.sleep, 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    save_lines(Path(args.out).with_suffix(".png"),
               {mode: ([p["round"] + 1 for p in points], [p["images_per_s"] for p in points])
                for mode, points in runs.items()},
               xlabel="round", ylabel="images/s", log_x=False, target=1 / args.sleep,
               title=f"store overlap, sleep {args.sleep}s/image, {args.size}px PNG")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
