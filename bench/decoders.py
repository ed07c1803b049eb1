"""Decoders: the SD/SDXL VAE decoder against TAESD (the tiny autoencoder behind `--decoder tiny`),
both at their real architectures with random weights: FLOPs per image (FlopCounterMode on the meta
device, nothing allocated) at 512 and 1024, and measured time side by side on this machine.

    .venv/bin/python bench/decoders.py [--device cpu|cuda] [--sizes 256,512] [--repeats 3]

On a CPU keep the timed sizes small (the VAE decoder at 512 is ~2.5 TFLOP); FLOPs are counted
at 512 and 1024 regardless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "decoders.json"))
    args = parser.parse_args()

    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny
    from torch.utils.flop_counter import FlopCounterMode

    from bench.gpu import VAE

    def models(device, dtype):
        torch.manual_seed(0)
        with torch.device(device):
            return {"vae": AutoencoderKL(**VAE).to(dtype), "taesd": AutoencoderTiny().to(dtype)}

    flops = {}
    with torch.inference_mode():
        for size in (512, 1024):
            latent = torch.randn(1, 4, size // 8, size // 8, device="meta")
            for name, model in models("meta", torch.float32).items():
                with FlopCounterMode(display=False) as counter:
                    model.decode(latent)
                flops.setdefault(str(size), {})[f"{name}_tflop"] = round(counter.get_total_flops() / 1e12, 3)
            flops[str(size)]["ratio"] = round(flops[str(size)]["vae_tflop"] / flops[str(size)]["taesd_tflop"], 1)

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    timed = {}
    decoders = models(device, dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for size in [int(s) for s in args.sizes.split(",")]:
            latent = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)
            row = {}
            for name, model in decoders.items():
                model.decode(latent)  # warm-up
                sync()
                samples = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    model.decode(latent)
                    sync()
                    samples.append((time.perf_counter() - started) * 1000)
                row[f"{name}_ms"] = round(statistics.median(samples), 1)
            row["speedup"] = round(row["vae_ms"] / row["taesd_ms"], 1)
            timed[str(size)] = row
            print(size, json.dumps(row), flush=True)

    result = {"benchmark": "decoders", "device": args.device, "dtype": str(dtype).replace("torch.", ""),
              "repeats": args.repeats, "flops_per_image": flops, "decode_ms_per_image": timed,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    sizes = [int(s) for s in timed]
    save_lines(Path(args.out).with_suffix(".png"),
               {name: (sizes, [timed[str(s)][f"{name}_ms"] for s in sizes]) for name in ("vae", "taesd")},
               xlabel="image side (px)", ylabel="ms per image (decode)",
               title=f"VAE vs TAESD decode, {args.device}, random weights")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
