"""Jobs that start from images (issue 13): the farm against the plain diffusers loop, side by side.

For img2img and ControlNet on tiny-sd (LCM-LoRA, 4 steps, 64 px, strength 0.5 / control scale
0.8), the same input images and seeds go through

- the loop: the seeds' snippet for these kinds, one ``pipe(prompt, image=..., generator=...)``
  call per image on ``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionControlNetPipeline``
  loaded once, each image saved as a PNG;
- the farm: ``farm submit --init-image A --init-image B ...`` (each input read, checked and stored,
  then jobs of different images share pipeline calls: micro-batches of FARM_MICRO_BATCH) -> Redis ->
  Celery worker (fetches each input once into its cache) -> store -> ledger.

The render engine alone (``Runner.render`` on micro-batches of the same jobs, in this process) is
timed too, so what micro-batching gains and what the farm's bookkeeping costs show apart.

Both warm (pipelines loaded), alternating rounds, a fresh seed range every round (a repeated seed
would be reused from the store, the farm's dedupe, and measure nothing): the benchmark checks the
farm renders every image of a round. It also times a worker's input fetch per image: a miss (from
the store into the cache, sha256 checked) against a hit (from the cache, checked again), at 64 and
512 px.

    .venv/bin/python bench/img2img.py --images 32 --rounds 3
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
STRENGTH, CONTROL_SCALE = 0.5, 0.8


def make_inputs(directory: Path, count: int, size: int = 64) -> list[Path]:
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    paths = []
    for i in range(count):
        path = directory / f"input-{size}-{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


class Loop:
    """The plain diffusers loop, one pipeline per kind, loaded once."""

    def __init__(self, model_cache: Path, out_dir: Path):
        from diffusers import (
            ControlNetModel,
            LCMScheduler,
            StableDiffusionControlNetPipeline,
            StableDiffusionImg2ImgPipeline,
        )

        from engine.sources import resolve

        model = resolve("builtin:tiny-sd", model_cache).path
        lora = resolve("builtin:tiny-sd-lcm-lora", model_cache).path
        controlnet = ControlNetModel.from_pretrained(resolve("builtin:tiny-sd-canny", model_cache).path)
        self.pipes = {
            "img2img": StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None,
                                                                      requires_safety_checker=False),
            "controlnet": StableDiffusionControlNetPipeline.from_pretrained(
                model, controlnet=controlnet, safety_checker=None, requires_safety_checker=False),
        }
        for pipe in self.pipes.values():
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
            pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="lcm")
            pipe.set_progress_bar_config(disable=True)
        self.out_dir = out_dir

    def one(self, kind: str, image_path: Path, seed: int) -> None:
        import torch
        from PIL import Image

        image = Image.open(image_path).convert("RGB")
        extra = {"strength": STRENGTH} if kind == "img2img" else {"controlnet_conditioning_scale": CONTROL_SCALE,
                                                                  "width": 64, "height": 64}
        result = self.pipes[kind](PROMPT, image=image, num_inference_steps=4, guidance_scale=1.0,
                                  generator=torch.Generator().manual_seed(seed), **extra).images[0]
        result.save(self.out_dir / f"{kind}-{seed}.png")

    def images_per_s(self, kind: str, inputs: list[Path], first_seed: int) -> float:
        self.one(kind, inputs[0], 0)  # warm
        started = time.perf_counter()
        for i, path in enumerate(inputs):
            self.one(kind, path, first_seed + i)
        return len(inputs) / (time.perf_counter() - started)


class Engine:
    """The farm's render engine alone, in this process: ``Runner.render`` on micro-batches of the
    same jobs (what the farm adds on top of it: submission, queue, ledger, PNGs, store)."""

    def __init__(self, model_cache: Path, work: Path, inputs: list[Path], micro_batch: int):
        from engine.inputs import check_image
        from engine.runner import Runner
        from farm.jobs.kinds import input_key
        from farm.storage import open_store

        store = open_store(f"file://{work / 'engine-store'}")
        self.shas = []
        for path in inputs:
            checked = check_image("init_image", path.read_bytes(), path.name)
            store.put(input_key(checked.sha256), checked.data, "image/png")
            self.shas.append(checked.sha256)
        self.runner = Runner(device="cpu", model_cache=model_cache, store_url=store.url)
        self.micro_batch = micro_batch

    def jobs(self, kind: str, first_seed: int) -> list:
        from dataclasses import replace

        from farm.jobs.spec import direct_spec

        base = direct_spec(model="tiny-sd", seed=0, prompt=PROMPT, adapters=[("tiny-sd-lcm-lora", 1.0, "accelerator")])
        if kind == "img2img":
            return [replace(base, seed=first_seed + i, kind=kind, init_image=sha, strength=STRENGTH)
                    for i, sha in enumerate(self.shas)]
        return [replace(base, seed=first_seed + i, kind=kind, control_image=sha, controlnet="tiny-sd-canny",
                        control_scale=CONTROL_SCALE) for i, sha in enumerate(self.shas)]

    def images_per_s(self, kind: str, first_seed: int) -> float:
        jobs = self.jobs(kind, first_seed)
        self.runner.render(jobs[: self.micro_batch])  # warm
        started = time.perf_counter()
        for i in range(0, len(jobs), self.micro_batch):
            self.runner.render(jobs[i:i + self.micro_batch])
        return len(jobs) / (time.perf_counter() - started)


def farm_cli(*args, env) -> str:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def spec_file(kind: str, inputs: list[Path], first_seed: int, directory: Path) -> Path:
    """A spec whose one zipped axis pairs input i with seed first_seed + i, as the loop renders them."""
    field = "init_image" if kind == "img2img" else "control_image"
    axis = {field: [str(p) for p in inputs], "seed": [first_seed + i for i in range(len(inputs))]}
    spec: dict = {"prompt": PROMPT, "model": "tiny-sd", "axes": [axis]}
    spec.update({"strength": STRENGTH} if kind == "img2img" else
                {"controlnet": "tiny-sd-canny", "control_scale": CONTROL_SCALE})
    path = directory / f"{kind}-{first_seed}.json"
    path.write_text(json.dumps(spec))
    return path


def farm_images_per_s(env: dict, kind: str, inputs: list[Path], first_seed: int) -> tuple[float, dict]:
    from farm.config import load_config
    from farm.ledger import Ledger

    ledger = Ledger(load_config(env).database_url)
    try:
        started = time.perf_counter()
        spec = spec_file(kind, inputs, first_seed, Path(env["FARM_HOME"]).parent)
        submitted = json.loads(farm_cli("submit", "--spec", str(spec), "--json", env=env))
        if submitted["to_render"] != len(inputs):  # the premise: every image of the round is rendered
            raise RuntimeError(f"the farm would reuse {submitted['reused']} of {len(inputs)} images: seeds repeated")
        batch = submitted["batch"]
        while sum(ledger.batch_counts(batch)[s] for s in ("succeeded", "failed")) < len(inputs):
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        counts = ledger.batch_counts(batch)
        if counts["failed"] or counts["succeeded"] != len(inputs):
            raise RuntimeError(f"{counts['failed']} jobs failed")
        views = ledger.list_jobs(batch)
        if any(v.spec.kind != kind for v in views):
            raise RuntimeError("the farm rendered another kind")
        if sorted(v.seed for v in views) != list(range(first_seed, first_seed + len(inputs))):
            raise RuntimeError("the farm rendered other seeds than the loop")
        return len(inputs) / elapsed, {"batch_sizes": sorted({v.batch_size for v in views}),
                                       "messages": submitted["messages"]}
    finally:
        ledger.close()


def fetch_costs(work: Path, sizes=(64, 512), count: int = 16) -> dict:
    """ms per image for a worker's input fetch: miss (store -> cache, sha256 checked, decoded) and
    hit (cache, sha256 checked, decoded)."""
    from engine.inputs import InputCache, check_image
    from farm.jobs.kinds import input_key
    from farm.storage import open_store

    store = open_store(f"file://{work / 'fetch-store'}")
    out = {}
    for size in sizes:
        shas = []
        for path in make_inputs(work / f"fetch-{size}", count, size):
            checked = check_image("init_image", path.read_bytes(), path.name)
            store.put(input_key(checked.sha256), checked.data, "image/png")
            shas.append(checked.sha256)
        cache = InputCache(work / f"fetch-cache-{size}", store.url)
        started = time.perf_counter()
        for sha in shas:
            cache.image(sha)
        miss = (time.perf_counter() - started) * 1000 / count
        started = time.perf_counter()
        for sha in shas:
            cache.image(sha)
        hit = (time.perf_counter() - started) * 1000 / count
        assert cache.stats == {"hits": count, "misses": count}, cache.stats
        out[f"{size}px"] = {"miss_ms_per_image": round(miss, 3), "hit_ms_per_image": round(hit, 3),
                            "png_bytes": len(store.get(input_key(shas[0])))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, default=8, help="FARM_MICRO_BATCH: images per pipeline call")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "img2img.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="farm-bench-img2img-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_MODEL_CACHE=str(work / "models"), HF_HUB_OFFLINE="1",
               FARM_MICRO_BATCH=str(args.micro_batch))
    inputs = make_inputs(work / "inputs", args.images)
    loop_dir = work / "loop"
    loop_dir.mkdir()
    farm_cli("up", "--workers", str(args.workers), env=env)
    results: dict = {}
    try:
        for kind in ("img2img", "controlnet"):  # warm: workers started, pipelines and the ControlNet loaded
            farm_images_per_s(env, kind, inputs[:1], 1)
        loop = Loop(Path(env["FARM_MODEL_CACHE"]), loop_dir)
        engine = Engine(Path(env["FARM_MODEL_CACHE"]), work, inputs, args.micro_batch)
        for kind in ("img2img", "controlnet"):
            loop_rates, farm_rates, engine_rates, details = [], [], [], []
            for round_ in range(args.rounds):
                first_seed = 100_000 * (round_ + 1) + (0 if kind == "img2img" else 50_000)  # fresh every round
                loop_rates.append(loop.images_per_s(kind, inputs, first_seed))
                rate, detail = farm_images_per_s(env, kind, inputs, first_seed)
                farm_rates.append(rate)
                details.append(detail)
                engine_rates.append(engine.images_per_s(kind, first_seed))
            results[kind] = {
                "loop_images_per_s": [round(r, 2) for r in loop_rates],
                "farm_images_per_s": [round(r, 2) for r in farm_rates],
                "loop_ms_per_image_median": round(1000 / statistics.median(loop_rates), 2),
                "farm_ms_per_image_median": round(1000 / statistics.median(farm_rates), 2),
                "ratio_farm_over_loop": round(statistics.median(farm_rates) / statistics.median(loop_rates), 3),
                "engine_images_per_s": [round(r, 2) for r in engine_rates],
                "ratio_engine_over_loop": round(statistics.median(engine_rates) / statistics.median(loop_rates), 3),
                "farm_rounds": details,
            }
    finally:
        farm_cli("down", env=env)
    result = {
        "benchmark": "img2img",
        "model": "tiny-sd", "recipe": "lcm-lora", "steps": 4, "size": "64x64", "strength": STRENGTH,
        "denoise_steps": int(4 * STRENGTH), "controlnet": "tiny-sd-canny", "control_scale": CONTROL_SCALE,
        "images_per_round": args.images, "distinct_inputs_per_round": args.images, "rounds": args.rounds,
        "farm_workers": args.workers, "micro_batch": args.micro_batch, "fresh_seeds_per_round": True,
        "farm_rendered_every_image": True, "farm_time_includes": "submit (read, check, store inputs) to last image",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        **results,
        "input_fetch": fetch_costs(work),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
