"""Farm vs loops: images/s through the whole farm against the peer a user would build, side by side.

The peer to beat is the batched loop at the farm's own deployment and batching: N processes (the
farm's worker count) with one torch thread each, every process rendering its share of the round's
seeds in micro-batches of 8 (``pipe([prompt] * 8, generator=[one per seed])``, the farm's
micro-batch) and writing each image as a PNG with the metadata the farm writes (the A1111
``parameters`` text and the JSON job record, through the farm's own encoder), so both sides pay
the same encoding cost. The farm is timed from the library API of a warm client (a script's
``Farm``), and from the CLI (``farm submit`` in a fresh process). Context: the seeds' snippet (one
``pipe(prompt, generator=...)`` per image, one process with torch's default threads). The farm is ``farm submit`` -> Redis ->
Celery worker(s) -> store -> ledger, with its local private Redis and SQLite ledger. Both run on
the same model, prompts, seeds and machine, warm (pipelines loaded, one warm-up image each), in one
run, alternating rounds so machine noise hits both. Every round uses a fresh seed range and the
benchmark checks that the farm rendered every image of it: a repeated seed would be reused from
the store (the farm's dedupe) and measure nothing.

The farm runs as it is deployed on a CPU host: one worker per core, each with one torch thread
(`farm up --workers N` shares the cores out), as it runs one worker per GPU. The loop runs as the
seeds' snippet does: one process, torch's default threads (every core). Every farm worker renders
an untimed warm-up message first (its pipeline loaded), as the loop renders a warm-up image.

    .venv/bin/python bench/farm_vs_loop.py [--images 1024] [--rounds 3] [--workers CORES]
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


def batched_worker(model_cache: str, requests, replies) -> None:
    """One process of the batched loop: the pipeline loaded and warmed, then (seeds, out_dir)
    requests rendered in micro-batches of ``MICRO_BATCH``, each image written as the farm writes it."""
    import torch

    torch.set_num_threads(1)
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from engine.imaging import encode_png
    from engine.sources import resolve
    from farm.jobs.spec import direct_spec
    from farm.results.metadata import a1111_parameters, job_record, job_record_json

    cache = Path(model_cache)
    pipe = StableDiffusionPipeline.from_pretrained(resolve("builtin:tiny-sd", cache).path, safety_checker=None)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(resolve("builtin:tiny-sd-lcm-lora", cache).path, weight_name="pytorch_lora_weights.safetensors",
                           adapter_name="lcm")
    pipe.set_progress_bar_config(disable=True)

    def render(seeds: list[int], out_dir: Path) -> None:
        for start in range(0, len(seeds), MICRO_BATCH):
            chunk = seeds[start:start + MICRO_BATCH]
            images = pipe([PROMPT] * len(chunk), num_inference_steps=4, guidance_scale=1.0, width=64, height=64,
                          generator=[torch.Generator().manual_seed(s) for s in chunk], output_type="np").images
            for seed, image in zip(chunk, images):
                pixels = (image * 255).round().clip(0, 255).astype("uint8")
                record = job_record(direct_spec(model="tiny-sd", seed=seed, prompt=PROMPT), job_id=None, batch=None,
                                    index=None, worker="loop", device="cpu", versions={})
                (out_dir / f"{seed}.png").write_bytes(encode_png(pixels, a1111_parameters(record),
                                                                 job_record_json(record)))

    render([0] * MICRO_BATCH, Path(tempfile.mkdtemp(prefix="farm-loop-warm-")))  # warm-up
    replies.put("ready")
    while True:
        request = requests.get()
        if request is None:
            return
        seeds, out_dir = request
        render(seeds, Path(out_dir))
        replies.put(len(seeds))


class BatchedLoop:
    """N warm loop processes; ``round`` splits a seed range into N contiguous shares."""

    def __init__(self, model_cache: Path, processes: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.requests = [context.Queue() for _ in range(processes)]
        self.replies = context.Queue()
        self.procs = [context.Process(target=batched_worker, args=(str(model_cache), q, self.replies), daemon=True)
                      for q in self.requests]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            self.replies.get(timeout=600)

    def images_per_s(self, images: int, first_seed: int, out_dir: Path) -> float:
        seeds = list(range(first_seed, first_seed + images))
        share = -(-images // len(self.procs))
        started = time.perf_counter()
        for i, q in enumerate(self.requests):
            q.put((seeds[i * share:(i + 1) * share], str(out_dir)))
        done = sum(self.replies.get(timeout=600) for _ in self.requests)
        elapsed = time.perf_counter() - started
        written = sum(1 for p in out_dir.glob("*.png") if first_seed <= int(p.stem) < first_seed + images)
        if done != images or written != images:  # the premise: every image rendered and written
            raise RuntimeError(f"the batched loop rendered {done} and wrote {written} of {images} images")
        return images / elapsed

    def close(self) -> None:
        for q in self.requests:
            q.put(None)
        for proc in self.procs:
            proc.join(30)


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
    broker connections open), timed from ``submit_plan`` until ``wait`` returns."""
    started = time.perf_counter()
    submitted = farm.submit_plan(farm.plan(prompt, model="tiny-sd", variants=images, seed=first_seed))
    if submitted.to_render != images:  # the premise: every image of the round is rendered
        raise RuntimeError(f"the farm would reuse {submitted.reused} of {images} images: seeds repeated")
    counts = farm.wait(submitted.batch)  # as a script waits: the doorbell, not a poll of its own
    if counts["failed"]:
        raise RuntimeError(f"{counts['failed']} jobs failed")
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-seeds-loop", action="store_true", help="skip the seeds' per-image loop (context)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "farm_vs_loop.json"))
    args = parser.parse_args()

    import farm as farm_lib

    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_MODEL_CACHE=str(work / "models"), HF_HUB_OFFLINE="1")
    loop_dir, batched_dir = work / "loop", work / "batched"
    loop_dir.mkdir()
    batched_dir.mkdir()
    farm_cli("up", "--workers", str(args.workers), env=env)
    client = None
    batched = None
    try:
        # every worker started, its pipeline loaded: two messages per worker (MICRO_BATCH images each)
        farm_images_per_s(env, 2 * MICRO_BATCH * args.workers, 0, prompt="warm-up")
        os.environ.update({k: v for k, v in env.items() if k.startswith("FARM_")})
        client = farm_lib.Farm.connect(env)
        farm_api_images_per_s(client, MICRO_BATCH, 1, prompt="warm-up client")  # the client's connections open
        batched = BatchedLoop(Path(env["FARM_MODEL_CACHE"]), args.workers)
        rates: dict[str, list[float]] = {"farm_api": [], "farm_cli": [], "batched_loop": [], "seeds_loop": []}
        for round_ in range(args.rounds):
            base = 1_000_000 * (round_ + 1)  # fresh seeds for every side and round: nothing to reuse
            rates["batched_loop"].append(batched.images_per_s(args.images, base, batched_dir))
            rates["farm_api"].append(farm_api_images_per_s(client, args.images, base + 100_000))
            rates["farm_cli"].append(farm_images_per_s(env, args.images, base + 200_000))
            if not args.no_seeds_loop:
                rates["seeds_loop"].append(loop_images_per_s(Path(env["FARM_MODEL_CACHE"]), args.images, loop_dir,
                                                             base + 300_000))
            print({k: round(v[-1], 1) for k, v in rates.items() if v}, flush=True)
    finally:
        if batched is not None:
            batched.close()
        if client is not None:
            client.close()
        farm_cli("down", env=env)
    median = {k: statistics.median(v) for k, v in rates.items() if v}
    result = {
        "benchmark": "farm_vs_loop",
        "model": "tiny-sd", "recipe": "lcm-lora", "steps": 4, "size": "64x64",
        "images_per_round": args.images, "rounds": args.rounds, "fresh_seeds_per_round": True,
        "farm_rendered_every_image": True, "batched_loop_wrote_every_image": True,
        "deployment": f"{args.workers} processes x 1 torch thread, micro-batch {MICRO_BATCH}, on both the farm and "
                      "the batched loop; the seeds' loop: one process, torch's default threads, one image per call",
        "png_metadata": "both the farm and the batched loop write the A1111 parameters text and the JSON job record "
                        "(engine.imaging.encode_png); the seeds' loop saves a plain PNG",
        "farm_workers": args.workers, "micro_batch": MICRO_BATCH,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        **{f"{k}_images_per_s": [round(r, 2) for r in v] for k, v in rates.items() if v},
        "batched_loop_images_per_s_median": round(median["batched_loop"], 2),
        "ratio_farm_api_over_batched_loop": round(median["farm_api"] / median["batched_loop"], 3),
        "ratio_farm_cli_over_batched_loop": round(median["farm_cli"] / median["batched_loop"], 3),
    }
    if "seeds_loop" in median:
        result["ratio_farm_api_over_seeds_loop"] = round(median["farm_api"] / median["seeds_loop"], 3)
        result["loop_torch_threads"] = torch_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    rounds = list(range(1, args.rounds + 1))
    labels = {"farm_api": "farm, library API", "farm_cli": "farm, farm submit", "batched_loop": "batched loop (same "
              "deployment)", "seeds_loop": "seeds' loop (one pipe() per image)"}
    save_lines(Path(args.out).with_suffix(".png"), {labels[k]: (rounds, v) for k, v in rates.items() if v},
               xlabel="round (alternating, same machine)", ylabel="images/s", log_x=False,
               title=f"tiny-sd, 4 steps, 64 px: farm API / batched loop = {result['ratio_farm_api_over_batched_loop']}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
