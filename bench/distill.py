"""LCM distillation (issue 14): training speed, and what a longer run buys at 1-8 sampling steps.

- speed: training steps/s of engine.training.distill at batch 4, 8 and 16 on tiny-sd (CPU); with
  ``--device cuda`` also the SD1.5 and SDXL architectures built from engine/configs with random
  fp16 weights at their native sizes (512, 1024), LoRA rank ``--cuda-rank`` (64, the reference
  script's), with the peak device memory of each.
- quality (``--quality``): distil tiny-sd (the trained teacher) on the shapes set without three
  held-out captions, once per training seed (``--train-seeds 0,1,2``), and evaluate each LoRA on
  the held-out captions (engine.training.evaluation): per sampler at its best documented setting
  and step count, the latent MSE and pixel RMSE against the teacher's 50-step sample from the same
  noise and the colour-and-shape task accuracy, each with a 95% bootstrap interval, the floor
  (the 50-step teacher from other noise) and the ceiling (its own task accuracy), and paired
  verdicts of the LoRA against each teacher sampler. The plot: latent MSE vs sampling steps.

    .venv/bin/python bench/distill.py                      # speed, a few steps per batch size
    .venv/bin/python bench/distill.py --no-speed --quality --steps 1500
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


HELD_OUT = ("a white triangle", "a green square", "a blue circle")  # left out of every training set below


def run_quality(args, cache: Path) -> dict:
    """Distil tiny-sd on the shapes set minus ``HELD_OUT`` once per training seed, and evaluate
    each LoRA on the held-out captions (engine.training.evaluation: paired errors against the
    teacher's 50-step samples from the same noise, with bootstrap intervals, the floor, and the
    colour-and-shape task with the teacher's own accuracy as its ceiling)."""
    from engine.training import shapes
    from engine.training.distill import DistillSettings, distill
    from engine.training.evaluation import evaluate

    pipe = tiny_pipe(cache)
    pool = shapes.sample(args.seed, args.examples * 2)
    data = [pair for pair in pool if pair[1] not in HELD_OUT][:args.examples]
    trained_captions = sorted({c for _, c in data})
    assert not set(HELD_OUT) & set(trained_captions), "held-out captions leaked into training"
    seeds = [int(s) for s in args.train_seeds.split(",")]
    runs = []
    for seed in seeds:
        settings = DistillSettings(steps=args.steps, rank=args.rank, lr=args.lr, batch_size=args.batch,
                                   checkpoint_every=0, seed=seed)
        def report(step, loss, rate, seed=seed, every=max(1, args.steps // 10)):
            if step % every == 0:
                print(f"seed {seed} step {step} loss {loss:.5f} {rate:.2f} steps/s", flush=True)

        started = time.perf_counter()
        result = distill(pipe, "sd15", data, settings, on_progress=report)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        table = evaluate(pipe, "sd15", result.weights, list(HELD_OUT), samples=args.samples, steps=(1, 2, 4, 8),
                         original_inference_steps=result.original_inference_steps)
        eval_s = time.perf_counter() - started
        print(f"seed {seed}: trained {train_s:.0f} s, evaluated {eval_s:.0f} s", flush=True)
        thin = max(1, len(result.losses) // 100)
        runs.append({"seed": seed, "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                     "steps_per_s": round(result.steps_done / train_s, 3), "losses_every": thin,
                     "losses": [round(x, 6) for x in result.losses[::thin]], "evaluation": table})
    return {"model": "tiny-sd", "teacher": teacher_kind(), "data": "shapes", "examples": len(data),
            "held_out_prompts": list(HELD_OUT), "trained_captions": trained_captions,
            "settings": {k: getattr(settings, k) for k in ("steps", "rank", "lr", "batch_size", "skip",
                                                          "guidance_min", "guidance_max", "huber_c")},
            "train_seeds": seeds, "samples": args.samples, "runs": runs, "summary": summarise(runs)}


def summarise(runs: list[dict]) -> dict:
    """The table as the docs show it: each teacher sampler once (it does not depend on training),
    the LoRA's rows per training seed and their mean, and per step count how many seeds the LoRA
    beat, tied or lost against each teacher sampler (paired bootstrap on latent MSE and on the task)."""
    first = runs[0]["evaluation"]
    teacher = [r for r in first["rows"] if r["sampler"] != "lcm-lora"]
    lora: dict[int, dict] = {}
    for run in runs:
        for row in run["evaluation"]["rows"]:
            if row["sampler"] == "lcm-lora":
                entry = lora.setdefault(row["steps"], {"steps": row["steps"], "setting": row["setting"], "seeds": []})
                entry["seeds"].append({"seed": run["seed"], **{m: row[m] for m in ("latent_mse", "pixel_rmse",
                                                                                   "task_accuracy")}})
    for entry in lora.values():
        for metric in ("latent_mse", "pixel_rmse", "task_accuracy"):
            means = [s[metric]["mean"] for s in entry["seeds"]]
            entry[metric] = {"mean_of_seeds": round(sum(means) / len(means), 6), "range": [min(means), max(means)]}
    verdicts: dict[str, dict] = {}
    for run in runs:
        for c in run["evaluation"]["comparisons"]:
            key = f"{c['against']} @{c['steps']}"
            for metric in ("latent_mse", "task_accuracy"):
                tally = verdicts.setdefault(key, {}).setdefault(metric, {"better": 0, "tie": 0, "worse": 0})
                tally[c[metric]["verdict"]] += 1
    return {"reference": first["reference"], "floor": first["floor"], "ceiling": first["ceiling"],
            "teacher_rows": teacher, "lcm_lora": [lora[n] for n in sorted(lora)], "lora_vs_teacher": verdicts}


def plot(path: Path, quality: dict) -> None:
    from bench.plotting import save_lines

    summary = quality["summary"]
    series: dict[str, tuple[list, list]] = {}
    for sampler in ("teacher-ddim", "teacher-dpmpp-2m-karras", "teacher-lcm"):
        rows = [r for r in summary["teacher_rows"] if r["sampler"] == sampler]
        series[sampler] = ([r["steps"] for r in rows], [r["latent_mse"]["mean"] for r in rows])
    for run in quality["runs"]:
        rows = [r for r in run["evaluation"]["rows"] if r["sampler"] == "lcm-lora"]
        series[f"lcm-lora, training seed {run['seed']}"] = ([r["steps"] for r in rows],
                                                            [r["latent_mse"]["mean"] for r in rows])
    floor = summary["floor"]["latent_mse"]["mean"]
    series["floor: 50-step teacher, other noise"] = ([1, 8], [floor, floor])
    save_lines(path, series, xlabel="sampling steps", ylabel="latent MSE to the teacher's 50-step sample (same noise)",
               title=f"LCM-LoRA on held-out prompts, tiny-sd ({quality['teacher']} teacher), "
                     f"{quality['settings']['steps']} training steps", logy=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batches", default="4,8,16")
    parser.add_argument("--speed-steps", type=int, default=10, help="timed training steps per batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--quality", action="store_true", help="the long run with evaluations")
    parser.add_argument("--steps", type=int, default=1500, help="quality run: training steps per seed")
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=96, help="evaluation samples (per sampler and step count)")
    parser.add_argument("--batch", type=int, default=8, help="quality run: batch size")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--cuda-rank", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0, help="quality run: the dataset's seed")
    parser.add_argument("--train-seeds", default="0,1,2", help="quality run: one distillation per training seed")
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
    if args.quality:
        plot(out.with_suffix(".png"), results["quality"])
    print(json.dumps({k: v for k, v in results.items() if k != "quality"}, indent=2))


if __name__ == "__main__":
    main()
