"""GPU benchmark: SD1.5 and SDXL architectures built from their real configs with random fp16
weights (nothing to download), 4 steps, the seeds' plain loop against the farm's runner.

Reports images/s, the fraction of the FLOP bound (FLOPs of one UNet forward and one VAE decode
counted with torch.utils.flop_counter.FlopCounterMode, against the device's dense fp16 peak), and
the share of time in text encoding, denoising, VAE decode and PNG encoding.

    .venv/bin/python bench/gpu.py [--families sd15,sdxl] [--batch 1,2,4,8] [--dtype fp16|bf16] [--peak-tflops 989]

On a machine without CUDA it says so and exits 2; `--cpu-smoke` runs SD1.5 at 64 px on the CPU in
fp32 to check the code path (the numbers mean nothing there).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense fp16/bf16 tensor-core peaks (TFLOP/s) without sparsity
PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)


def build(family: str, directory: Path, dtype) -> Path:
    """A real-architecture pipeline with random weights, saved like a downloaded checkpoint."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.pipelines.tiny import _clip_tokenizer

    target = directory / family
    if (target / "model_index.json").exists():
        return target
    torch.manual_seed(0)

    def clip(hidden, layers, heads, projection=None):
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              projection_dim=projection or hidden, hidden_act="gelu", bos_token_id=518,
                              eos_token_id=519, pad_token_id=519)

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1)
    vae = AutoencoderKL(**VAE, scaling_factor=0.18215 if family == "sd15" else 0.13025,
                        force_upcast=family == "sdxl")
    if family == "sd15":
        pipe = StableDiffusionPipeline(unet=UNet2DConditionModel(**SD15_UNET), vae=vae,
                                       text_encoder=CLIPTextModel(clip(768, 12, 12)), tokenizer=_clip_tokenizer(),
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(
            unet=UNet2DConditionModel(**SDXL_UNET), vae=vae, text_encoder=CLIPTextModel(clip(768, 12, 12)),
            text_encoder_2=CLIPTextModelWithProjection(clip(1280, 32, 20, projection=1280)),
            tokenizer=_clip_tokenizer(), tokenizer_2=_clip_tokenizer(pad_token="!"), scheduler=scheduler)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(str(target), safe_serialization=True)
    return target


def flops(pipe, family: str, size: int, device) -> dict:
    """FLOPs of one UNet forward (one image, no CFG) and one VAE decode at ``size``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    latent = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=pipe.unet.dtype)
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=pipe.unet.dtype)
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, device=device, dtype=pipe.unet.dtype),
                                       "time_ids": torch.zeros(1, 6, device=device, dtype=pipe.unet.dtype)}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as unet_counter:
            pipe.unet(latent, torch.tensor(500, device=device), encoder_hidden_states=text, **kwargs)
        with FlopCounterMode(display=False) as vae_counter:
            pipe.vae.decode(latent.to(pipe.vae.dtype))
    return {"unet_tflop": unet_counter.get_total_flops() / 1e12, "vae_decode_tflop": vae_counter.get_total_flops() / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--batch", default="1,2,4,8")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="the runner's (FARM_DTYPE)")
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    args = parser.parse_args()

    import torch
    from diffusers import LCMScheduler

    from engine.imaging import encode_png
    from engine.quiet import quiet_libraries
    from farm.spec import direct_spec

    quiet_libraries()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: run this on a GPU machine (or --cpu-smoke to check the code path)", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    dtype = torch.float32 if args.cpu_smoke else {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    name = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    families = ["sd15"] if args.cpu_smoke else args.families.split(",")
    cache = Path(os.environ.get("FARM_MODEL_CACHE") or tempfile.mkdtemp(prefix="farm-gpu-"))
    images = 4 if args.cpu_smoke else args.images
    results = []
    for family in families:
        size = 64 if args.cpu_smoke else (512 if family == "sd15" else 1024)
        model_dir = build(family, cache / f"random-{str(dtype).replace('torch.', '')}", dtype)
        from engine.runner import Runner
        from farm.catalog import ModelEntry
        from farm.spec import Catalog

        entry = ModelEntry(f"random-{family}", str(model_dir), family, family, size)
        taesd_dir = model_dir.parent / f"taesd-{family}"
        if not (taesd_dir / "config.json").exists():
            from diffusers import AutoencoderTiny

            torch.manual_seed(1)
            AutoencoderTiny().to(dtype).save_pretrained(str(taesd_dir), safe_serialization=True)  # TAESD's layout
        runner = Runner(device=device.type, model_cache=cache, bucket=1, preview_decoders={family: str(taesd_dir)},
                        dtype="fp32" if args.cpu_smoke else args.dtype,
                        catalog=lambda entry=entry: Catalog(models={entry.name: entry}, adapters={}))
        resident, load_ms = runner.pipeline(entry.name)
        pipe = resident.pipe
        counted = flops(pipe, family, size, device)
        steps = 4
        bound_s = steps * counted["unet_tflop"] / peak + counted["vae_decode_tflop"] / peak if peak else None

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        # the seeds' loop: one pipe() call per image, PIL output, PNG encode
        pipe.scheduler = LCMScheduler.from_config(resident.base_scheduler[1])
        gen = lambda s: torch.Generator("cpu").manual_seed(s)  # noqa: E731
        pipe("warm-up", num_inference_steps=steps, guidance_scale=1.0, width=size, height=size, generator=gen(0))
        sync()
        started = time.perf_counter()
        for seed in range(images):
            image = pipe("a lighthouse at dusk", num_inference_steps=steps, guidance_scale=1.0, width=size,
                         height=size, generator=gen(seed)).images[0]
            image.save(io.BytesIO(), format="PNG")
        sync()
        loop_rate = images / (time.perf_counter() - started)

        curve = []
        for micro in [int(b) for b in args.batch.split(",")]:
            jobs = [direct_spec(seed=s, steps=steps, width=size, height=size, model=entry.name,
                                family=entry.family) for s in range(images)]
            runner.render(jobs[:micro])  # warm-up at this shape
            stage = {"text_encode_ms": 0.0, "denoise_ms": 0.0, "vae_decode_ms": 0.0, "image_encode_ms": 0.0}
            started = time.perf_counter()
            for i in range(0, images, micro):
                rendered = runner.render(jobs[i:i + micro])
                for key in ("text_encode_ms", "denoise_ms", "vae_decode_ms"):
                    stage[key] += rendered.timings[key]
                t = time.perf_counter()
                for pixels in rendered.pixels:
                    encode_png(pixels, "", "{}")
                stage["image_encode_ms"] += (time.perf_counter() - t) * 1000
            rate = images / (time.perf_counter() - started)
            total = sum(stage.values())
            curve.append({"micro_batch": micro, "images_per_s": round(rate, 3),
                          "vs_loop": round(rate / loop_rate, 2),
                          "fraction_of_flop_bound": round(bound_s * rate, 3) if bound_s else None,
                          "time_share": {k[:-3]: round(v / total, 3) for k, v in stage.items()}})
            print(family, json.dumps(curve[-1]), flush=True)
        # host synchronisations after the first step (its scheduler set-up may sync once): the
        # rest of the denoising loop should queue work without waiting; the decode's copy of the
        # uint8 pixels to the host is the one expected sync
        syncs = None
        if device.type == "cuda":
            import warnings

            def watch():
                torch.cuda.set_sync_debug_mode("warn")
                return None

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    runner.render(jobs[:1], should_stop=watch)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = {"after_step_1": len(caught), "steps": steps,
                     "where": sorted({str(w.message)[:80] for w in caught})[:5]}
            print(family, "host syncs", json.dumps(syncs), flush=True)

        # previews: the best micro-batch again, decoded by TAESD instead of the VAE
        best = max(curve, key=lambda c: c["images_per_s"])["micro_batch"]
        previews = [replace(j, decoder="tiny") for j in jobs]
        runner.render(previews[:best])
        decode_ms = 0.0
        started = time.perf_counter()
        for i in range(0, images, best):
            rendered = runner.render(previews[i:i + best])
            decode_ms += rendered.timings["vae_decode_ms"]
            for pixels in rendered.pixels:
                encode_png(pixels, "", "{}")
        preview = {"micro_batch": best, "images_per_s": round(images / (time.perf_counter() - started), 3),
                   "decode_ms_per_image": round(decode_ms / images, 2)}
        print(family, "preview", json.dumps(preview), flush=True)
        results.append({"family": family, "size": size, "steps": steps, "dtype": str(dtype), "preview_taesd": preview,
                        "host_syncs": syncs, **{
            k: round(v, 3) for k, v in counted.items()}, "flop_bound_ms_per_image": round(bound_s * 1000, 1)
            if bound_s else None, "loop_images_per_s": round(loop_rate, 3), "runner": curve,
            "model_load_ms": round(load_ms)})
        runner._unload(entry.name)
    report = {"benchmark": "gpu", "device": name, "peak_tflops": peak, "results": results,
              "machine": {"platform": platform.platform()}}
    out = Path(args.out if not args.cpu_smoke else str(Path(args.out).with_name("gpu-cpu-smoke.json")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
