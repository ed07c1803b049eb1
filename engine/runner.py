"""Rendering micro-batches: resident pipelines, recipes applied, one generator per image.

One pipeline call renders a micro-batch of jobs that share every setting but prompt and seed.
Each image has its own ``torch.Generator`` seeded with its own seed. The call runs at a batch
size padded up to a multiple of ``bucket``: CPU kernels (oneDNN convolutions, GEMV for one row)
take different code paths for other batch sizes, and that changes the last bits of the result.
With fixed shapes an image's pixels do not depend on which other images shared its call.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from engine import embeddings
from engine import kinds as image_kinds
from engine import offload as offloading
from engine.adapters import AdapterSet, HostStateDicts
from engine.inputs import InputCache
from engine.invariance import row_wise_linear
from engine.sources import Location, resolve
from farm.errors import InputError
from farm.jobs.spec import Catalog, JobSpec
from farm.models.catalog import PREVIEW_DECODERS


class Interrupted(Exception):
    """A pipeline call stopped at a step boundary: its jobs were cancelled ("cancelled"), the
    worker is draining ("draining"), or the call ran past its time limit ("timeout")."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Rendered:
    pixels: list  # HxWx3 uint8 numpy arrays, in job order
    timings: dict[str, float]  # ms for the whole call, per stage
    batch_size: int  # rows in the pipeline call (padding included)
    scheduler: str = ""  # the scheduler class that ran (a recipe may keep the model's own)
    environment: dict | None = None  # what else shaped the pixels: adapter sha256s, fusing, device


@dataclass
class Resident:
    pipe: Any  # a diffusers pipeline of the family
    family: ModuleType
    base_scheduler: tuple[Any, dict]  # the model's own scheduler class and config
    adapters: AdapterSet
    tiny_decoder: object = None  # TAESD for preview jobs, loaded on the first one
    stack: tuple | None = None  # the adapter stack last activated (offload re-hooks on a change)
    derived: dict = field(default_factory=dict)  # (kind, controlnet) -> its pipeline on these modules (issue 13)
    dtype: Any = None  # the pipeline's weights (FARM_DTYPE, or the family's choice under auto)


def family_module(family: str) -> ModuleType:
    from engine.pipelines import flux, sd, sd3, sdxl

    for module in (sd, sdxl, flux, sd3):
        if family in module.FAMILIES:
            return module
    raise InputError("model", f"no pipeline for the {family!r} family")


def family_call(family: ModuleType, pipe, spec: JobSpec) -> dict:
    """What one pipeline call of ``spec``'s micro-batch needs beyond the arguments every family
    shares: ``guided`` (whether CFG runs, so negative prompts are encoded) and extra keyword
    arguments for the family's ``encode`` and ``decode`` and for the pipeline call. A family
    module says so with ``prepare(pipe, spec)`` (FLUX: no CFG, T5's sequence length, the size to
    unpack latents); the UNet families run CFG above guidance 1 unless the UNet embeds guidance."""
    if hasattr(family, "prepare"):
        return family.prepare(pipe, spec)
    guided = spec.guidance > 1.0 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
    return {"guided": guided, "encode": {}, "call": {}, "decode": {}}


def denoiser(pipe):
    """The pipeline's denoising network: the UNet, or the transformer (FLUX, SD3)."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def _stop_check(should_stop: Callable[[], str | None]):
    """A step-end callback that interrupts the pipeline when ``should_stop`` gives a reason."""
    def callback(_pipe, step, _timestep, callback_kwargs):
        reason = should_stop()
        if reason:
            raise Interrupted(f"{reason} at step {step + 1}", reason)
        return callback_kwargs

    return callback


class Runner:
    def __init__(self, *, device: str, model_cache, max_models: int = 2, bucket: int | None = None,
                 catalog: Callable[[], Catalog] = Catalog, s3_endpoint_url: str | None = None,
                 fuse: bool | None = None, max_adapters: int = 8, max_adapter_bytes: int = 2 << 30,
                 host_lora_bytes: int = 4 << 30, compile: bool = False,
                 preview_decoders: dict[str, str] | None = None, dtype: str = "auto", offload: str = "none",
                 vae_tiling: bool = False, store_url: str | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        # fp16 on CUDA by default; bf16 trades mantissa bits for fp32's range (no VAE upcast needed)
        self._dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
        self.dtype = self._dtypes.get(dtype) or (torch.float16 if self.is_cuda else torch.float32)
        self.auto_dtype = dtype == "auto"  # a family may pick its own on CUDA (FLUX and SD3: bf16)
        self.bucket = bucket or (1 if self.is_cuda else 4)
        self.model_cache = model_cache
        self.max_models = max_models
        self.s3_endpoint_url = s3_endpoint_url
        self._load_catalog = catalog  # built-ins plus the ledger's registry, re-read for new names
        self.catalog = catalog()
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        # fusing changes the arithmetic (W + BA once, instead of x@W + x@A@B every step), so it is
        # on by default only where bit-exact equality with the plain path is not promised anyway
        self.fuse = self.is_cuda if fuse is None else fuse
        self.compile = compile  # opt-in torch.compile of the UNet (CUDA only; warms up per shape)
        self.max_adapters = max_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.host_loras = HostStateDicts(host_lora_bytes)  # shared by every resident pipeline
        self.preview_decoders = {**PREVIEW_DECODERS, **(preview_decoders or {})}  # arch -> TAESD source
        offloading.check(offload, self.device.type)
        self.offload = offload  # engine.offload: keep weights in host RAM, on the device while they run
        self.vae_tiling = vae_tiling
        # issue 13: the images jobs start from (fetched from the farm's store once, kept by sha256
        # under the model cache) and the ControlNets they use (engine.kinds)
        self.inputs = InputCache(Path(model_cache) / "inputs", store_url, s3_endpoint_url=s3_endpoint_url)
        self.controlnets = image_kinds.ControlNets(self)

    # -- residency ------------------------------------------------------------------------------
    def model_dtype(self, family: ModuleType):
        """The dtype a pipeline of ``family`` loads in: FARM_DTYPE, or under ``auto`` on CUDA the
        family's own choice (FLUX and SD3: bf16, as they are published; the rest fp16)."""
        if self.auto_dtype and self.is_cuda and getattr(family, "CUDA_DTYPE", None):
            return self._dtypes[family.CUDA_DTYPE]
        return self.dtype

    def _entry(self, kind: str, name: str):
        entries = self.catalog.models if kind == "model" else self.catalog.adapters
        if name not in entries:
            self.catalog = self._load_catalog()  # registered after this worker started?
            entries = self.catalog.models if kind == "model" else self.catalog.adapters
        if name not in entries:
            raise InputError(kind, f"unknown {kind} {name!r}")
        return entries[name]

    def model_entry(self, name: str):
        """The catalog entry of a model (re-reading the registry for a name added since)."""
        return self._entry("model", name)

    def _resolve(self, entry):
        return resolve(entry.source, self.model_cache, name=entry.name, sha256=entry.sha256,
                       s3_endpoint_url=self.s3_endpoint_url)

    def _locate_adapter(self, name: str) -> tuple[Location, str | None]:
        entry = self._entry("adapter", name)
        location = self._resolve(entry)
        return location, None if location.single_file else entry.weight_name

    def pipeline(self, model: str, motion: str | None = None) -> tuple[Resident, float]:
        """The resident pipeline of ``model`` (loaded if needed) and the ms spent loading it;
        with ``motion``, its AnimateDiff pipeline with that motion module (a resident of its own:
        engine.clips)."""
        key = model if motion is None else f"{model}+{motion}"
        if key in self.resident:
            self.resident.move_to_end(key)
            return self.resident[key], 0.0
        started = time.perf_counter()
        while len(self.resident) >= self.max_models:
            self._unload(next(iter(self.resident)))
        pipe, family, dtype = self._load(model)
        if motion is not None:  # issue 27: the motion module's temporal layers go into a copy of the UNet
            from engine import clips

            pipe = clips.clip_pipeline(self, pipe, motion, dtype)
        if self.offload == "none":
            pipe.to(self.device)
        if self.is_cuda:  # NHWC convolutions run on the tensor cores without layout shuffles
            import torch

            denoiser(pipe).to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
            if dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
                # SDXL's VAE overflows in fp16 (NaN, black images); diffusers upcasts it for every
                # decode, we keep it in fp32 once (an fp16-fixed VAE says force_upcast: false)
                pipe.vae.to(torch.float32)
        if self.compile:  # inductor: Triton kernels on CUDA, C++ on a CPU (needs a compiler)
            # in place (Module.compile), not torch.compile(unet): the wrapper it returns hides the
            # UNet from diffusers' LoRA loader, and no adapter could load. One graph per batch shape.
            denoiser(pipe).compile(dynamic=False)
        pipe.set_progress_bar_config(disable=True)
        offloading.enable(pipe, self.offload, self.device)
        if self.vae_tiling:
            offloading.enable_vae_tiling(pipe)
        scheduler = pipe.scheduler
        adapters = AdapterSet(pipe, self._locate_adapter, max_loaded=self.max_adapters,
                              max_bytes=self.max_adapter_bytes, host=self.host_loras, fuse=self.fuse,
                              fuse_stack=self.compile)
        resident = Resident(pipe, family, (type(scheduler), dict(scheduler.config)), adapters, dtype=dtype)
        self.resident[key] = resident
        return resident, (time.perf_counter() - started) * 1000

    def _load(self, model: str, dtype=None) -> tuple[Any, ModuleType, Any]:
        """A fresh pipeline of ``model`` through the family's loader (on the CPU, not cached)."""
        entry = self._entry("model", model)
        family = family_module(entry.family)
        dtype = dtype or self.model_dtype(family)
        location = self._resolve(entry)
        if not (location.single_file or location.is_hub or (Path(location.path) / "model_index.json").exists()):
            raise InputError("model", f"{model}: {location.path} is not a diffusers model directory "
                                      "(no model_index.json)")
        pipe = family.load(location.path, single_file=location.single_file, revision=entry.revision,
                           dtype=dtype, cache_dir=str(self.model_cache / "hub"), arch=entry.arch,
                           model_cache=self.model_cache)
        return pipe, family, dtype

    def training_pipeline(self, model: str):
        """A teacher for a training job (issue 14): its own copy, loaded as a render would load it,
        with no adapter, offload or compilation, on the device. The resident pipelines are let go
        first: a worker runs one training job at a time and it needs the memory."""
        for name in list(self.resident):
            self._unload(name)
        pipe, _family, _dtype = self._load(model)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def tiny_decoder(self, model: str, resident: Resident):
        """The model's TAESD decoder (same latents, a fraction of the VAE's cost), loaded once."""
        if resident.tiny_decoder is None:
            from diffusers import AutoencoderTiny

            arch = self._entry("model", model).arch
            source = self.preview_decoders[arch]  # every arch has one (farm.models.catalog.PREVIEW_DECODERS)
            location = resolve(source, self.model_cache, name=f"{arch}-taesd", s3_endpoint_url=self.s3_endpoint_url)
            if location.single_file:
                raise InputError("decoder", f"{source}: a tiny autoencoder loads from a diffusers directory "
                                            "(config.json + weights), not a single file")
            decoder = AutoencoderTiny.from_pretrained(location.path, dtype=resident.dtype or self.dtype,
                                                      cache_dir=str(self.model_cache / "hub"))
            decoder.to(self.device)
            if self.is_cuda:
                decoder.to(memory_format=self.torch.channels_last)
            resident.tiny_decoder = decoder
        return resident.tiny_decoder

    def _unload(self, model: str) -> None:
        import gc

        self.resident.pop(model, None)
        gc.collect()
        if self.is_cuda:
            self.torch.cuda.empty_cache()

    def resident_models(self) -> list[str]:
        return list(self.resident)

    def resident_adapters(self) -> list[str]:
        return [f"{m}/{a}" for m, r in self.resident.items() for a in r.adapters.resident]

    # -- rendering ------------------------------------------------------------------------------
    def _scheduler(self, resident: Resident, name: str | None, overrides: dict):
        import diffusers

        base_cls, base_config = resident.base_scheduler
        cls = getattr(diffusers, name) if name else base_cls
        # a fresh scheduler per call: schedulers keep per-run state (timesteps, step index)
        return cls.from_config(base_config, **overrides)

    def _sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def render(self, jobs: list[JobSpec], should_stop: Callable[[], str | None] | None = None) -> Rendered:
        """Render job specs that share a group key in one pipeline call (prompts and seeds differ)."""
        torch = self.torch
        first = jobs[0]
        timings: dict[str, float] = {}
        # weights load outside inference mode: tensors made inside it can never be modified again
        # (peft sets requires_grad and swaps adapter weights in place)
        clip = first.clip  # issue 27: a clip renders on the model's AnimateDiff pipeline (engine.clips)
        resident, timings["model_load_ms"] = self.pipeline(first.model, clip["motion"] if clip else None)
        pipe, family = resident.pipe, resident.family
        stack = [(a.name, a.weight) for a in first.adapters]
        accelerator = next((a.name for a in first.adapters if a.role == "accelerator"), None)
        if self.offload != "none" and resident.stack != (stack, accelerator):
            with offloading.hooks_off(pipe, self.offload, self.device):
                timings["adapter_load_ms"] = resident.adapters.activate(stack, accelerator)
        else:
            timings["adapter_load_ms"] = resident.adapters.activate(stack, accelerator)
        resident.stack = (stack, accelerator)
        # --- issue 12, textual inversion (engine.embeddings): the jobs' embeddings load into the
        # pipeline once, outside inference mode; prompts are respelt with the tokens they load under
        started = time.perf_counter()
        pairs = embeddings.prepare(self, pipe, jobs)
        timings["adapter_load_ms"] += (time.perf_counter() - started) * 1000
        # --- end issue 12
        decoder_name = first.decoder
        if decoder_name == "tiny":
            started = time.perf_counter()
            decoder = self.tiny_decoder(first.model, resident)
            timings["model_load_ms"] += (time.perf_counter() - started) * 1000
        else:
            decoder = None  # the pipeline's own VAE
        pipe.scheduler = self._scheduler(resident, first.scheduler, first.scheduler_config or {})
        # issue 13: an image kind runs its own pipeline (made of the resident one's modules) on its inputs
        kind_call = None if first.kind in ("txt2img", "clip") else \
            image_kinds.prepare(self, resident, jobs, len(jobs) + (-len(jobs)) % self.bucket, timings)
        # on the CPU, per-image rows of small products are computed alone (engine.invariance)
        invariant = contextlib.nullcontext() if self.is_cuda else row_wise_linear(self.bucket)
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        with offloading.grad_mode(self.offload), invariant:
            call = family_call(family, pipe, first)  # CFG or not; the family's extra arguments
            guided = call["guided"]

            started = time.perf_counter()
            unique = list(dict.fromkeys(pairs))  # one text encoding per distinct prompt
            # the text encoders run at bucketed batch sizes too (SDXL's pooled projection is a
            # one-row GEMV for a single prompt, which rounds differently)
            padded = unique + [unique[0]] * ((-len(unique)) % self.bucket)
            embeds = family.encode(pipe, [p for p, _ in padded], [n for _, n in padded], guided, **call["encode"])
            rows = len(jobs) + (-len(jobs)) % self.bucket
            index = [unique.index(p) for p in pairs]
            index += [index[0]] * (rows - len(jobs))  # padding rows repeat the first prompt
            picks = torch.tensor(index, device=self.device)
            embeds = {k: v.index_select(0, picks) for k, v in embeds.items()}
            self._sync()
            timings["text_encode_ms"] = (time.perf_counter() - started) * 1000

            generators = [torch.Generator("cpu").manual_seed(int(j.seed)) for j in jobs]
            generators += [torch.Generator("cpu").manual_seed(0) for _ in range(rows - len(jobs))]
            started = time.perf_counter()
            # the pipeline's own denoising loop (scheduler, guidance, size conditioning), to latents
            denoise, sized = (pipe, {"width": first.width, "height": first.height}) if kind_call is None else \
                (kind_call.pipe, kind_call.kwargs)  # issue 13: an image kind's pipeline, images and size
            if clip:
                sized["num_frames"] = clip["frames"]
            latents = denoise(**embeds, generator=generators, num_inference_steps=first.steps,
                              guidance_scale=first.guidance, **sized,
                              output_type="latent", return_dict=False, **call["call"],
                           callback_on_step_end=_stop_check(should_stop) if should_stop else None)[0]
            self._sync()
            timings["denoise_ms"] = (time.perf_counter() - started) * 1000

            started = time.perf_counter()
            if clip:  # (clips, frames, H, W, 3), each clip's frames in a VAE call of their own
                from engine.clips import decode_frames

                pixels = decode_frames(family, pipe, latents, len(jobs), decoder)
            else:
                images = family.decode(pipe, latents, decoder, **call["decode"])
                # to uint8 on the device: the host gets 1 byte per channel, not 4
                pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
                pixels = pixels[: len(jobs)].permute(0, 2, 3, 1).contiguous().cpu().numpy()
            if kind_call is not None and kind_call.finish is not None:  # the inpaint overlay (issue 13)
                pixels = kind_call.finish(pixels)
            self._sync()
            timings["vae_decode_ms"] = (time.perf_counter() - started) * 1000
        # the most device memory this call held (what offload and tiling are for); 0 on the CPU
        timings["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.is_cuda else 0.0
        environment = {
            "device": str(self.device), "dtype": str(resident.dtype or self.dtype).replace("torch.", ""),
            "batch_bucket": self.bucket,
            "fused": resident.adapters.fused is not None, "decoder": decoder_name, "offload": self.offload,
            "vae_tiling": self.vae_tiling,
            "adapter_sha256": {name: resident.adapters.digests.get(name) for name, _ in stack},
            **(kind_call.environment if kind_call is not None else {}),
        }
        if clip:
            from engine.clips import motion_digest

            environment["motion_sha256"] = {clip["motion"]: motion_digest(self, clip["motion"])}
        return Rendered([pixels[i] for i in range(len(jobs))], timings, rows, type(pipe.scheduler).__name__,
                        environment)
