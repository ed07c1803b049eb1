"""Batch-size curve: images/s of the worker's runner at micro-batch 1, 2, 4, 8, 16.

Measured with the padding to the batch bucket (the default on CPU, which keeps pixels independent
of the batch) and without it, so the price of bit-exact batch invariance is visible.

    .venv/bin/python bench/batch.py [--model tiny-sd] [--size 64] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch.json"))
    args = parser.parse_args()

    from engine.quiet import quiet_libraries
    from engine.runner import Runner
    from farm.jobs.spec import direct_spec

    quiet_libraries()
    cache = Path(os.environ.get("FARM_MODEL_CACHE") or tempfile.mkdtemp(prefix="farm-bench-models-"))
    arch = {"tiny-sd": "tiny-sd", "tiny-sdxl": "tiny-sdxl"}.get(args.model, args.model)

    def jobs(n, offset):
        return [direct_spec(seed=offset + i, width=args.size, height=args.size, model=args.model,
                            family="sdxl" if "sdxl" in args.model else "sd15",
                            adapters=[(f"{arch}-lcm-lora", 1.0, "accelerator")])
                for i in range(n)]

    curves = {}
    for label, bucket in (("bucket_4", 4), ("bucket_1", 1)):
        runner = Runner(device=args.device, model_cache=cache, bucket=bucket)
        runner.render(jobs(4, 0))  # load and warm up
        curve = []
        for n in [int(x) for x in args.sizes.split(",")]:
            rates = []
            for r in range(args.repeats):
                started = time.perf_counter()
                runner.render(jobs(n, 1000 * r))
                rates.append(n / (time.perf_counter() - started))
            curve.append({"micro_batch": n, "images_per_s": round(statistics.median(rates), 2)})
            print(label, json.dumps(curve[-1]), flush=True)
        curves[label] = curve
    result = {"benchmark": "batch", "model": args.model, "size": args.size, "steps": 4, "device": args.device,
              "repeats": args.repeats, "curves": curves,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    save_lines(Path(args.out).with_suffix(".png"),
               {label: ([p["micro_batch"] for p in c], [p["images_per_s"] for p in c]) for label, c in curves.items()},
               xlabel="micro-batch size", ylabel="images/s (render only)",
               title=f"{args.model} {args.size}px, 4 steps, {args.device}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
