"""LCM distillation (issue 14): training speed, and what a longer run buys at 1-8 sampling steps.

- speed: training steps/s of engine.training.distill at batch 4, 8 and 16 on tiny-sd (CPU); with
  ``--device cuda`` also the SD1.5 and SDXL architectures built from engine/configs with random
  fp16 weights at their native sizes (512, 1024), LoRA rank ``--cuda-rank`` (64, the reference
  script's), with the peak device memory of each.
- quality (``--quality``): distil tiny-sd (the trained teacher when engine/weights/tiny-sd is
  there) on the shapes set for ``--steps`` steps, evaluating (engine.training.evaluation) every
  ``--eval-every`` steps: Frechet distance to the teacher's 50-step DDIM samples per sampler
  (teacher DDIM, teacher LCMScheduler, teacher + LCM-LoRA) and sampling step count, and the
  one-step error. The plot: Frechet distance vs sampling steps, one line per sampler (the LoRA at
  each evaluated checkpoint).

    .venv/bin/python bench/distill.py                      # speed, a few steps per batch size
    .venv/bin/python bench/distill.py --quality --steps 2000 --eval-every 500
    .venv/bin/python bench/distill.py --device cuda        # adds SD1.5 and SDXL architectures

Each part updates its own section of bench/results/distill.json, so they can run separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NATIVE = {"sd15": 512, "sdxl": 1024}


def examples(n: int, size: int, seed: int = 0) -> tuple[list, str]:
    """The shapes set at 64 px (engine.training.shapes), or random images with colour captions
    where that module is missing or another size is needed."""
    import numpy as np

    if size == 64:
        try:
            from engine.training import shapes

            return shapes.sample(seed, n), "shapes"
        except ImportError:
            pass
    rng = np.random.default_rng(seed)
    colours = ("red", "green", "blue", "yellow", "white")
    return [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), f"a {colours[i % 5]} picture")
            for i in range(n)], "random"


def tiny_pipe(cache: Path):
    from diffusers import StableDiffusionPipeline

    from engine.pipelines.tiny import ensure_tiny_model

    directory = ensure_tiny_model("tiny-sd", cache)
    pipe = StableDiffusionPipeline.from_pretrained(str(directory), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def teacher_kind() -> str:
    return "trained" if (ROOT / "engine" / "weights" / "tiny-sd" / "SHA256SUMS").exists() else "random"


def real_pipe(arch: str, device: str):
    """SD1.5 or SDXL architecture from engine/configs, random fp16 weights, built on the device."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.pipelines.single_file import CONFIGS, tokenizers

    root = CONFIGS / arch
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae")))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(root / "text_encoder_2"))) \
            if arch != "sd15" else None
    unet.to(torch.float16)
    text_encoder.to(torch.float16)
    if text_encoder_2 is not None:
        text_encoder_2.to(torch.float16)
    # the VAE stays in fp32 (random weights overflow fp16; SDXL's needs fp32 anyway: force_upcast)
    scheduler = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(str(root / "scheduler")))
    toks = tokenizers(root)
    if arch == "sd15":
        pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=toks["tokenizer"],
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=toks["tokenizer"], tokenizer_2=toks["tokenizer_2"],
                                         scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def speed(pipe, family: str, data: list, batch: int, steps: int, warmup: int, rank: int, device: str) -> dict:
    """Steps/s after ``warmup`` steps, and the peak device memory (CUDA)."""
    import torch

    from engine.training.distill import DistillSettings, distill

    times: list[float] = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def progress(step, loss, rate):
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    started = time.perf_counter()
    try:
        distill(pipe, family, data, DistillSettings(steps=warmup + steps, batch_size=batch, rank=rank,
                                                    checkpoint_every=0), on_progress=progress)
    except torch.OutOfMemoryError:
        return {"batch": batch, "error": "out of memory"}
    total = time.perf_counter() - started
    timed = times[warmup - 1:] if warmup else [started] + times
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    out = {"batch": batch, "steps_timed": len(timed) - 1, "steps_per_s": round(rate, 3),
           "examples_per_s": round(rate * batch, 2), "wall_s_with_setup": round(total, 2)}
    if device == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def run_speed(args, cache: Path) -> dict:
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    section: dict = {"steps_timed": args.speed_steps, "warmup_steps": args.warmup, "models": {}}
    pipe = tiny_pipe(cache)
    data, source = examples(64, 64)
    rows = []
    for batch in batches:
        rows.append(speed(pipe, "sd15", data, batch, args.speed_steps, args.warmup, args.rank, "cpu"))
        print("tiny-sd cpu", rows[-1], flush=True)
    section["models"]["tiny-sd"] = {"device": "cpu", "threads": torch.get_num_threads(), "dtype": "fp32",
                                    "teacher": teacher_kind(), "data": source, "size": 64, "rank": args.rank,
                                    "rows": rows}
    if args.device == "cuda":
        del pipe
        for arch in ("sd15", "sdxl"):
            pipe = real_pipe(arch, "cuda")
            size = NATIVE[arch]
            data, source = examples(32, size)
            rows = []
            for batch in batches:
                rows.append(speed(pipe, arch, data, batch, args.speed_steps, args.warmup, args.cuda_rank, "cuda"))
                print(arch, "cuda", rows[-1], flush=True)
                torch.cuda.empty_cache()
            section["models"][arch] = {"device": torch.cuda.get_device_name(), "dtype": "fp16 (autocast, LoRA fp32)",
                                       "weights": "random", "data": source, "size": size, "rank": args.cuda_rank,
                                       "rows": rows}
            del pipe
            torch.cuda.empty_cache()
    return section


def run_quality(args, cache: Path) -> dict:
    from engine.training.distill import DistillSettings, distill, result_from_checkpoint
    from engine.training.evaluation import evaluate

    pipe = tiny_pipe(cache)
    data, source = examples(args.examples, 64, seed=args.seed)
    try:
        from engine.training.shapes import CAPTIONS as prompts
    except ImportError:
        prompts = sorted({c for _, c in data})
    prompts = list(prompts)
    settings = DistillSettings(steps=args.steps, rank=args.rank, lr=args.lr, batch_size=args.batch,
                               checkpoint_every=args.eval_every, seed=args.seed)
    blobs: dict[int, bytes] = {}
    log_every = max(1, args.steps // 20)

    def progress(step, loss, rate):
        if step % log_every == 0:
            print(f"step {step} loss {loss:.5f} {rate:.2f} steps/s", flush=True)

    started = time.perf_counter()
    result = distill(pipe, "sd15", data, settings, on_progress=progress,
                     on_checkpoint=lambda step, blob: blobs.__setitem__(step, blob))
    train_s = time.perf_counter() - started

    def table(lora, steps_done):
        started = time.perf_counter()
        out = evaluate(pipe, "sd15", lora, prompts, samples=args.samples, steps=(1, 2, 4, 8),
                       original_inference_steps=result.original_inference_steps)
        out["training_steps"] = steps_done
        out["eval_s"] = round(time.perf_counter() - started, 1)
        print(steps_done, out["one_step_error"], flush=True)
        return out

    evaluations = [table(None, 0)]
    for step in sorted(blobs):
        evaluations.append(table(result_from_checkpoint(pipe, blobs[step]).weights, step))
    evaluations.append(table(result.weights, result.steps_done))
    thin = max(1, len(result.losses) // 200)
    return {"model": "tiny-sd", "teacher": teacher_kind(), "data": source, "examples": len(data),
            "settings": {k: getattr(settings, k) for k in ("steps", "rank", "lr", "batch_size", "skip",
                                                          "guidance_min", "guidance_max", "huber_c", "seed")},
            "train_s": round(train_s, 1), "steps_per_s": round(result.steps_done / train_s, 3),
            "original_inference_steps": result.original_inference_steps,
            "losses_every": thin, "losses": [round(x, 6) for x in result.losses[::thin]],
            "evaluations": evaluations}


def plot(path: Path, quality: dict) -> None:
    from bench.plotting import save_lines

    series: dict[str, tuple[list, list]] = {}
    first, *rest = quality["evaluations"]
    for sampler in ("teacher-ddim", "teacher-lcm"):
        rows = [r for r in first["rows"] if r["sampler"] == sampler]
        series[sampler] = ([r["steps"] for r in rows], [r["frechet"] for r in rows])
    for evaluation in rest:
        rows = [r for r in evaluation["rows"] if r["sampler"] == "lcm-lora"]
        series[f"lcm-lora @{evaluation['training_steps']}"] = ([r["steps"] for r in rows], [r["frechet"] for r in rows])
    save_lines(path, series, xlabel="sampling steps", ylabel=f"Frechet distance to {first['reference']}",
               title=f"LCM-LoRA, tiny-sd ({quality['teacher']} teacher), "
                     f"{quality['settings']['steps']} training steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batches", default="4,8,16")
    parser.add_argument("--speed-steps", type=int, default=10, help="timed training steps per batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--quality", action="store_true", help="the long run with evaluations")
    parser.add_argument("--steps", type=int, default=2000, help="quality run: training steps")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=64, help="evaluation samples")
    parser.add_argument("--batch", type=int, default=8, help="quality run: batch size")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--cuda-rank", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill.json"))
    args = parser.parse_args()

    import torch
    from diffusers.utils import logging as diffusers_logging

    torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here")
        sys.exit(2)
    cache = Path(os.environ.get("FARM_MODEL_CACHE") or tempfile.mkdtemp(prefix="farm-bench-models-"))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"benchmark": "distill",
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}})
    if not args.no_speed:
        results["speed"] = run_speed(args, cache)
    if args.quality:
        results["quality"] = run_quality(args, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if "quality" in results:
        plot(out.with_suffix(".png"), results["quality"])
    print(json.dumps({k: v for k, v in results.items() if k != "quality"}, indent=2))


if __name__ == "__main__":
    main()
