"""GPU benchmark: SD1.5 and SDXL architectures built from their real configs with random fp16
weights (nothing to download), 4 steps, the seeds' plain loop against the farm's runner; and the
flow-matching families, FLUX.1-schnell and SD3.5 Large (Turbo), from their published configs with
random bf16 weights (recipes schnell and sd35-turbo: 4 steps, no guidance, T5 at 256 tokens).

Reports images/s, the fraction of the FLOP bound (FLOPs of one UNet or transformer forward and one
VAE decode counted with torch.utils.flop_counter.FlopCounterMode, against the device's dense
fp16/bf16 peak; the text encoders' FLOPs are reported but left out of the bound, as the farm
encodes each distinct prompt once), and the share of time in text encoding, denoising, VAE decode
and PNG encoding.

    .venv/bin/python bench/gpu.py [--families sd15,sdxl,flux,sd3] [--batch 1,2,4,8] [--images 16]
                                  [--dtype auto|fp16|bf16] [--peak-tflops 989]

The flow families are built in memory on the device (FLUX.1-schnell is 12B + 4.7B (T5) parameters,
34 GB in bf16: no save and reload through the disk) and handed to the runner in place of its
``from_pretrained``; everything after loading is the runner's own path.

On a machine without CUDA it says so and exits 2; `--cpu-smoke` runs SD1.5 (or `--families`, e.g.
flux,sd3 with their layers scaled down) at 64 px on the CPU in fp32 to check the code path (the
numbers mean nothing there).
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

# -- the flow-matching families, as published (black-forest-labs/FLUX.1-schnell,
# stabilityai/stable-diffusion-3.5-large): transformer, text encoders, VAE, scheduler
FLOW_FAMILIES = ("flux", "sd3")
FLUX_SCHNELL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=False, axes_dims_rope=(16, 56, 56))
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                  attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                  caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                  qk_norm="rms_norm")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0, tie_word_embeddings=False)
FLOW_VAE = dict(VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
FLOW_VAE_FACTORS = {"flux": dict(scaling_factor=0.3611, shift_factor=0.1159),
                    "sd3": dict(scaling_factor=1.5305, shift_factor=0.0609)}
FLOW_SCHEDULERS = {"flux": dict(shift=1.0, use_dynamic_shifting=False), "sd3": dict(shift=3.0)}
FLOW_RECIPES = {"flux": "schnell", "sd3": "sd35-turbo"}
MAX_SEQUENCE_LENGTH = 256  # both recipes'
# --cpu-smoke: the same builders with every width and depth scaled down (the numbers mean nothing)
SMOKE = {"flux": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
         "sd3": dict(num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=128,
                     caption_projection_dim=32, pooled_projection_dim=32 + 64, pos_embed_max_size=32),
         # T5 as wide as the transformer's joint attention; CLIP-L 32 wide, CLIP-bigG 64
         "t5": {"flux": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
                "sd3": dict(d_model=128, d_kv=8, d_ff=64, num_layers=2, num_heads=4)},
         "clip": {768: 32, 1280: 64},
         "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)}


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


def build_flow(family: str, device, dtype, smoke: bool):
    """FLUX.1-schnell's or SD3.5 Large's pipeline with random weights, made on ``device`` in
    ``dtype`` (scaled down for ``smoke``); tokenizers are the tiny offline ones (engine.pipelines:
    their ids are valid ids of the real vocabularies)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from engine.pipelines.tiny import _clip_tokenizer
    from engine.pipelines.tiny_flow import t5_tokenizer

    def clip(hidden, layers, heads, act):  # CLIP ViT-L (768) or OpenCLIP ViT-bigG (1280)
        if smoke:
            hidden, layers, heads = SMOKE["clip"][hidden], 2, 4
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              projection_dim=hidden, hidden_act=act, bos_token_id=518, eos_token_id=519,
                              pad_token_id=519)

    t5_config = T5Config(**{**T5_XXL, **(SMOKE["t5"][family] if smoke else {})})
    vae_config = {**FLOW_VAE, **FLOW_VAE_FACTORS[family], **(SMOKE["vae"] if smoke else {})}
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # random init straight in bf16, on the device
    try:
        with torch.device(device):
            t5 = T5EncoderModel(t5_config)
            vae = AutoencoderKL(**vae_config)
            scheduler = FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULERS[family])
            if family == "flux":
                transformer = FluxTransformer2DModel(**{**FLUX_SCHNELL, **(SMOKE["flux"] if smoke else {})})
                pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=CLIPTextModel(clip(768, 12, 12,
                                    "quick_gelu")), tokenizer=_clip_tokenizer(), text_encoder_2=t5,
                                    tokenizer_2=t5_tokenizer(), transformer=transformer)
            else:
                transformer = SD3Transformer2DModel(**{**SD35_LARGE, **(SMOKE["sd3"] if smoke else {})})
                pipe = StableDiffusion3Pipeline(
                    transformer=transformer, scheduler=scheduler, vae=vae,
                    text_encoder=CLIPTextModelWithProjection(clip(768, 12, 12, "quick_gelu")),
                    tokenizer=_clip_tokenizer(),
                    text_encoder_2=CLIPTextModelWithProjection(clip(1280, 32, 20, "gelu")),
                    tokenizer_2=_clip_tokenizer(pad_token="!"), text_encoder_3=t5, tokenizer_3=t5_tokenizer())
    finally:
        torch.set_default_dtype(previous)
    return pipe  # every weight is made on the device in dtype (no cast: diffusers warns about casts)


def flow_flops(pipe, family: str, size: int, device) -> dict:
    """FLOPs of one transformer forward (one image, no CFG, T5 at 256 tokens), one VAE decode at
    ``size``, and one prompt's text encoding (CLIP + T5)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    t = pipe.transformer
    dtype, latent = t.dtype, size // 8
    if family == "flux":
        tokens = (latent // 2) ** 2
        kwargs = dict(hidden_states=torch.randn(1, tokens, t.config.in_channels, device=device, dtype=dtype),
                      encoder_hidden_states=torch.randn(1, MAX_SEQUENCE_LENGTH, t.config.joint_attention_dim,
                                                        device=device, dtype=dtype),
                      pooled_projections=torch.randn(1, t.config.pooled_projection_dim, device=device, dtype=dtype),
                      timestep=torch.ones(1, device=device, dtype=dtype),
                      img_ids=pipe._prepare_latent_image_ids(1, latent // 2, latent // 2, device, dtype),
                      txt_ids=torch.zeros(MAX_SEQUENCE_LENGTH, 3, device=device, dtype=dtype))
    else:
        kwargs = dict(hidden_states=torch.randn(1, 16, latent, latent, device=device, dtype=dtype),
                      encoder_hidden_states=torch.randn(1, 77 + MAX_SEQUENCE_LENGTH, t.config.joint_attention_dim,
                                                        device=device, dtype=dtype),
                      pooled_projections=torch.randn(1, t.config.pooled_projection_dim, device=device, dtype=dtype),
                      timestep=torch.ones(1, device=device, dtype=dtype))
    z = torch.randn(1, 16, latent, latent, device=device, dtype=pipe.vae.dtype)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as transformer_counter:
            t(**kwargs, return_dict=False)
        with FlopCounterMode(display=False) as vae_counter:
            pipe.vae.decode(z)
        with FlopCounterMode(display=False) as text_counter:
            if family == "flux":
                pipe.encode_prompt(["a lighthouse at dusk"], device=device, max_sequence_length=MAX_SEQUENCE_LENGTH)
            else:
                pipe.encode_prompt(["a lighthouse at dusk"], None, None, device=device, do_classifier_free_guidance=False,
                                   max_sequence_length=MAX_SEQUENCE_LENGTH)
    return {"unet_tflop": transformer_counter.get_total_flops() / 1e12,
            "vae_decode_tflop": vae_counter.get_total_flops() / 1e12,
            "text_encode_tflop": text_counter.get_total_flops() / 1e12}


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
    parser.add_argument("--families", default=None, help="sd15,sdxl (default), flux, sd3")
    parser.add_argument("--batch", default="1,2,4,8")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--dtype", choices=["auto", "fp16", "bf16"], default="auto",
                        help="the runner's (FARM_DTYPE); auto: fp16 for sd15/sdxl, bf16 for flux/sd3")
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    args = parser.parse_args()

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, LCMScheduler

    from engine.imaging import encode_png
    from engine.quiet import quiet_libraries
    from farm.jobs.spec import direct_spec

    quiet_libraries()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: run this on a GPU machine (or --cpu-smoke to check the code path)", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    families = (args.families or ("sd15" if args.cpu_smoke else "sd15,sdxl")).split(",")
    cache = Path(os.environ.get("FARM_MODEL_CACHE") or tempfile.mkdtemp(prefix="farm-gpu-"))
    images = 4 if args.cpu_smoke else args.images
    results = []
    for family in families:
        from diffusers import AutoencoderTiny

        from engine.runner import Runner, family_module
        from farm.jobs.spec import Catalog
        from farm.models.catalog import ModelEntry

        flow = family in FLOW_FAMILIES
        size = 64 if args.cpu_smoke else (512 if family == "sd15" else 1024)
        wanted = args.dtype if args.dtype != "auto" else ("bf16" if flow else "fp16")  # as the runner's auto
        dtype = torch.float32 if args.cpu_smoke else {"fp16": torch.float16, "bf16": torch.bfloat16}[wanted]
        label = str(dtype).replace("torch.", "")
        module, original_load = family_module(family), None
        prebuilt = None
        if flow:
            started = time.perf_counter()
            prebuilt = build_flow(family, device, dtype, smoke=args.cpu_smoke)
            print(family, f"built in memory in {time.perf_counter() - started:.1f} s", flush=True)
            entry = ModelEntry(f"random-{family}", f"random/{family}", family, family, size, kind="turbo")
            original_load = module.load
            module.load = lambda *_args, _pipe=prebuilt, **_kwargs: _pipe  # the runner's from_pretrained, in memory
            taesd_dir, taesd = cache / f"taesd-{family}-{label}", AutoencoderTiny(latent_channels=16)  # TAEF1/TAESD3
        else:
            model_dir = build(family, cache / f"random-{label}", dtype)
            entry = ModelEntry(f"random-{family}", str(model_dir), family, family, size)
            taesd_dir, taesd = model_dir.parent / f"taesd-{family}", AutoencoderTiny()  # TAESD's layout
        if not (taesd_dir / "config.json").exists():
            torch.manual_seed(1)
            taesd.to(dtype).save_pretrained(str(taesd_dir), safe_serialization=True)
        runner = Runner(device=device.type, model_cache=cache, bucket=1, preview_decoders={family: str(taesd_dir)},
                        dtype="fp32" if args.cpu_smoke else args.dtype,
                        catalog=lambda entry=entry: Catalog(models={entry.name: entry}, adapters={}))
        try:
            resident, load_ms = runner.pipeline(entry.name)
        finally:
            if original_load is not None:
                module.load = original_load
        pipe = resident.pipe
        counted = flow_flops(pipe, family, size, device) if flow else flops(pipe, family, size, device)
        steps = 4
        bound_s = steps * counted["unet_tflop"] / peak + counted["vae_decode_tflop"] / peak if peak else None

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        # the seeds' loop: one pipe() call per image, PIL output, PNG encode (the flow families: the
        # model's FlowMatchEuler, no guidance, T5 at the recipe's 256 tokens)
        if flow:
            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(resident.base_scheduler[1])
            call = {"guidance_scale": 0.0, "max_sequence_length": MAX_SEQUENCE_LENGTH}
        else:
            pipe.scheduler = LCMScheduler.from_config(resident.base_scheduler[1])
            call = {"guidance_scale": 1.0}
        gen = lambda s: torch.Generator("cpu").manual_seed(s)  # noqa: E731
        pipe("warm-up", num_inference_steps=steps, width=size, height=size, generator=gen(0), **call)
        sync()
        started = time.perf_counter()
        for seed in range(images):
            image = pipe("a lighthouse at dusk", num_inference_steps=steps, width=size, height=size,
                         generator=gen(seed), **call).images[0]
            image.save(io.BytesIO(), format="PNG")
        sync()
        loop_rate = images / (time.perf_counter() - started)

        curve = []
        for micro in [int(b) for b in args.batch.split(",")]:
            recipe = ({"recipe": FLOW_RECIPES[family], "scheduler": "FlowMatchEulerDiscreteScheduler", "guidance": 0.0}
                      if flow else {})
            jobs = [direct_spec(seed=s, steps=steps, width=size, height=size, model=entry.name,
                                family=entry.family, **recipe) for s in range(images)]
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
        results.append({"family": family, "size": size, "steps": steps, "dtype": str(resident.dtype or dtype),
                        "recipe": FLOW_RECIPES.get(family, "lcm-lora"), "preview_taesd": preview,
                        "host_syncs": syncs, **{
            k: round(v, 3) for k, v in counted.items()}, "flop_bound_ms_per_image": round(bound_s * 1000, 1)
            if bound_s else None, "loop_images_per_s": round(loop_rate, 3), "runner": curve,
            "model_load_ms": round(load_ms)})
        del pipe, resident, prebuilt, rendered  # the next family needs the memory
        runner._unload(entry.name)
    report = {"benchmark": "gpu", "device": name, "peak_tflops": peak, "results": results,
              "machine": {"platform": platform.platform()}}
    out = Path(args.out if not args.cpu_smoke else str(Path(args.out).with_name("gpu-cpu-smoke.json")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
