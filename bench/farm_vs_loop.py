"""Farm vs plain loop: images/s through the whole farm against the seeds' snippet, side by side.

The loop is the seeds' snippet: one ``pipe(prompt, generator=...)`` call per image with the
LCM-LoRA loaded (unfused), each image saved as a PNG. The farm is ``farm submit`` -> Redis ->
Celery worker(s) -> store -> ledger, with its local private Redis and SQLite ledger. Both run on
the same model, prompts, seeds and machine, warm (pipelines loaded, one warm-up image each), in one
run, alternating rounds so machine noise hits both. Every round uses a fresh seed range and the
benchmark checks that the farm rendered every image of it: a repeated seed would be reused from
the store (the farm's dedupe) and measure nothing.

The farm runs as it is deployed on a CPU host: one worker per core, each with one torch thread
(`farm up --workers N` shares the cores out), as it runs one worker per GPU. The loop runs as the
seeds' snippet does: one process, torch's default threads (every core). Every farm worker renders
an untimed warm-up message first (its pipeline loaded), as the loop renders a warm-up image.

    .venv/bin/python bench/farm_vs_loop.py [--images 256] [--rounds 3] [--workers CORES]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "a lighthouse at dusk"
MICRO_BATCH = 8  # the farm's default FARM_MICRO_BATCH


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def loop_images_per_s(model_cache: Path, images: int, out_dir: Path, first_seed: int) -> float:
    import torch
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from engine.sources import resolve

    pipe = StableDiffusionPipeline.from_pretrained(resolve("builtin:tiny-sd", model_cache).path, safety_checker=None)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    lora = resolve("builtin:tiny-sd-lcm-lora", model_cache).path
    pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="lcm")
    pipe.set_progress_bar_config(disable=True)

    def one(seed: int):
        image = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, width=64, height=64,
                     generator=torch.Generator().manual_seed(seed)).images[0]
        image.save(out_dir / f"{seed}.png")

    one(0)  # warm-up
    started = time.perf_counter()
    for seed in range(first_seed, first_seed + images):
        one(seed)
    return images / (time.perf_counter() - started)


def farm_cli(*args, env) -> str:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def farm_images_per_s(env: dict, images: int, first_seed: int, prompt: str = PROMPT) -> float:
    from farm.config import load_config
    from farm.ledger import Ledger

    ledger = Ledger(load_config(env).database_url)
    try:
        started = time.perf_counter()
        submitted = json.loads(farm_cli("submit", prompt, "--model", "tiny-sd", "--variants", str(images),
                                        "--seed", str(first_seed), "--json", env=env))
        if submitted["to_render"] != images:  # the premise: every image of the round is rendered
            raise RuntimeError(f"the farm would reuse {submitted['reused']} of {images} images: seeds repeated")
        batch = submitted["batch"]
        while True:  # one query per 50 ms: the watcher shares the cores with the workers it times
            counts = ledger.batch_counts(batch)
            if counts["succeeded"] + counts["failed"] >= images:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        if counts["failed"]:
            raise RuntimeError(f"{counts['failed']} jobs failed")
        return images / elapsed
    finally:
        ledger.close()


def farm_api_images_per_s(farm, images: int, first_seed: int, prompt: str = PROMPT) -> float:
    """The same batch through the library API from a warm client (a script's ``Farm``: ledger and
    broker connections open), timed from ``submit_plan`` to the last image done."""
    started = time.perf_counter()
    submitted = farm.submit_plan(farm.plan(prompt, model="tiny-sd", variants=images, seed=first_seed))
    if submitted.to_render != images:  # the premise: every image of the round is rendered
        raise RuntimeError(f"the farm would reuse {submitted.reused} of {images} images: seeds repeated")
    while True:
        counts = farm.ledger.batch_counts(submitted.batch)
        if counts["succeeded"] + counts["failed"] >= images:
            break
        time.sleep(0.05)
    if counts["failed"]:
        raise RuntimeError(f"{counts['failed']} jobs failed")
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "farm_vs_loop.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_MODEL_CACHE=str(work / "models"), HF_HUB_OFFLINE="1")
    loop_dir = work / "loop"
    loop_dir.mkdir()
    farm_cli("up", "--workers", str(args.workers), env=env)
    try:
        # every worker started, its pipeline loaded: two messages per worker (MICRO_BATCH images each)
        farm_images_per_s(env, 2 * MICRO_BATCH * args.workers, 0, prompt="warm-up")
        loop_rates, farm_rates = [], []
        for round_ in range(args.rounds):
            first_seed = 100_000 * (round_ + 1)  # fresh seeds each round: nothing to reuse
            loop_rates.append(loop_images_per_s(Path(env["FARM_MODEL_CACHE"]), args.images, loop_dir, first_seed))
            farm_rates.append(farm_images_per_s(env, args.images, first_seed))
    finally:
        farm_cli("down", env=env)
    result = {
        "benchmark": "farm_vs_loop",
        "model": "tiny-sd", "recipe": "lcm-lora", "steps": 4, "size": "64x64",
        "images_per_round": args.images, "rounds": args.rounds, "farm_workers": args.workers,
        "fresh_seeds_per_round": True, "farm_rendered_every_image": True,
        "micro_batch": MICRO_BATCH, "loop_torch_threads": torch_threads(),
        "farm_torch_threads_per_worker": max(1, (os.cpu_count() or 1) // args.workers),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "loop_images_per_s": [round(r, 2) for r in loop_rates],
        "farm_images_per_s": [round(r, 2) for r in farm_rates],
        "loop_ms_per_image_median": round(1000 / statistics.median(loop_rates), 2),
        "farm_ms_per_image_median": round(1000 / statistics.median(farm_rates), 2),
        "ratio_farm_over_loop": round(statistics.median(farm_rates) / statistics.median(loop_rates), 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    rounds = list(range(1, args.rounds + 1))
    save_lines(Path(args.out).with_suffix(".png"), {"farm (submit -> workers -> store -> ledger)": (rounds, farm_rates),
                                                     "plain loop (one pipe() per image)": (rounds, loop_rates)},
               xlabel="round (alternating, same machine)", ylabel="images/s", log_x=False,
               title=f"tiny-sd, 4 steps, 64 px: farm / loop = {result['ratio_farm_over_loop']}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
