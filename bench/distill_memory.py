"""Distillation's memory against its dataset's size (issue 21): a worker streams examples from the
store, so its peak RSS must not grow with the number of images.

For each dataset size (default 2,000 and 20,000 images of 256 px, the shapes set upscaled), the
images and their manifest are written to a file store as ``farm distill`` stores them
(``inputs/<sha256>.png``, ``datasets/<sha256>.jsonl``); then a fresh process runs what a worker
runs for a training job (``workers.training.load_examples`` over the worker's input cache, the
tiny-sd teacher, ``engine.training.distill`` at tiny-sd's native 64 px) for ``--steps`` steps and
reports its peak RSS (``ru_maxrss``). Every size trains the same number of steps on the same
batch size, so the only difference is the dataset.

    .venv/bin/python bench/distill_memory.py [--sizes 2000,20000] [--steps 300] [--eager]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_dataset(store: Path, n: int, side: int, seed: int = 0) -> str:
    """``n`` captioned shapes images of ``side`` px in the store's layout; the manifest's sha256."""
    import numpy as np
    from PIL import Image

    from engine.training import shapes

    rng = np.random.default_rng(seed)
    (store / "inputs").mkdir(parents=True, exist_ok=True)
    (store / "datasets").mkdir(parents=True, exist_ok=True)
    rows = []
    for image, caption in shapes.sample(rng, n):
        buffer = io.BytesIO()
        Image.fromarray(image).resize((side, side), Image.BICUBIC).save(buffer, format="PNG")
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        path = store / "inputs" / f"{sha}.png"
        if not path.exists():
            path.write_bytes(data)
        rows.append({"image": sha, "caption": caption})
    manifest = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    sha = hashlib.sha256(manifest).hexdigest()
    (store / "datasets" / f"{sha}.jsonl").write_bytes(manifest)
    return sha


def train(store: str, manifest: str, steps: int, cache: str, eager: bool = False) -> None:
    """The child: a worker's training data path, then its peak RSS as JSON on stdout."""
    from types import SimpleNamespace

    import torch
    from diffusers import StableDiffusionPipeline

    from engine.inputs import InputCache
    from engine.pipelines.tiny import ensure_tiny_model
    from engine.training.distill import DistillSettings, distill
    from farm.storage import open_store
    from workers.training import load_examples

    torch.set_num_threads(1)
    started = time.perf_counter()
    farm_store = open_store(f"file://{store}")
    runner = SimpleNamespace(inputs=InputCache(Path(cache) / "inputs", farm_store.url))
    examples = load_examples(runner, farm_store, manifest)
    if eager:  # what the worker did before issue 21: every decoded image in RAM before training
        examples = [(examples.image(i), examples.caption(i)) for i in range(len(examples))]
    pipe = StableDiffusionPipeline.from_pretrained(str(ensure_tiny_model("tiny-sd", Path(cache))), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = distill(pipe, "sd15", examples, DistillSettings(steps=steps, batch_size=8, checkpoint_every=0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"examples": len(examples), "steps": result.steps_done, "peak_rss_mb": round(peak / 1024, 1),
                      "rss_before_training_mb": round(before / 1024, 1),
                      "seconds": round(time.perf_counter() - started, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300, help="training steps (batch 8) per size")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_memory.json"))
    parser.add_argument("--eager", action="store_true",
                        help="also measure the old loader (every decoded image held in RAM) at each size")
    parser.add_argument("--child", nargs=5, metavar=("STORE", "MANIFEST", "STEPS", "CACHE", "EAGER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store, manifest, steps, cache, eager = args.child
        train(store, manifest, int(steps), cache, eager == "1")
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="farm-distill-memory-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            store = Path(tmp) / f"store-{n}"
            started = time.perf_counter()
            manifest = write_dataset(store, n, args.side)
            written = time.perf_counter() - started
            stored = sum(p.stat().st_size for p in (store / "inputs").iterdir())
            for eager in ((False, True) if args.eager else (False,)):
                out = subprocess.run([sys.executable, __file__, "--child", str(store), manifest, str(args.steps),
                                      str(Path(tmp) / f"cache-{n}"), "1" if eager else "0"], capture_output=True,
                                     text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-3000:])
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update({"images": n, "side": args.side, "stored_mb": round(stored / 2**20, 1),
                            "write_s": round(written, 1), "loader": "eager (before)" if eager else "streamed"})
                print(row, flush=True)
                rows.append(row)
    streamed = [r for r in rows if r["loader"] == "streamed"]
    small, large = streamed[0], streamed[-1]
    result = {"benchmark": "distill_memory", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "what": "peak RSS of a process running a worker's training data path (workers.training.load_examples "
                      "over the input cache) and engine.training.distill on tiny-sd at 64 px, batch 8",
              "rows": rows, "peak_rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
              "target": "the largest dataset's peak RSS at most 1.2x the smallest's"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
