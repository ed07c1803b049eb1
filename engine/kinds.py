"""Rendering jobs that start from images (issue 13) on a resident pipeline.

- One resident model serves every kind: the img2img, inpaint and ControlNet pipelines are built
  from the resident pipeline's own modules (``from_components``, as diffusers' ``from_pipe`` but
  without its cast of every shared module to one dtype, which would undo the SDXL VAE's fp32), so
  the LoRAs and embeddings loaded into them stay loaded and switching kinds loads nothing.
- Input images come from the worker's input cache (engine.inputs: fetched from the store once,
  checked against their sha256), are resized to the job's size with Lanczos when they differ (an
  upscale always: its size is the init image's times the factor), and the micro-batch is padded to
  the runner's bucket with the first job's images, as its prompts are: each image's pixels do not
  depend on its batch (img2img and inpaint encode each init image alone, at batch 1, whatever the
  batch; the UNet and the decoder run at the bucketed size).
- Inpainting keeps the unmasked pixels: diffusers blends the init image's latents back outside the
  mask at every step (a 4-channel UNet), and the decoded image is laid over the init image through
  the (blurred) mask as A1111 does (``apply_overlay``), so pixels where the mask is black are the
  init image's, exactly.
- ControlNets load once per worker (least recently used dropped beyond ``MAX_CONTROLNETS``) from a
  hub id, a diffusers directory or one ``.safetensors`` file (diffusers keys, or the original LDM
  keys converted by diffusers' own converter), with a config derived from the arch's UNet, offline.
"""

from __future__ import annotations

import inspect
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from farm.errors import InputError

MAX_CONTROLNETS = 2  # per worker; each is the size of its UNet's encoder
CONFIGS = Path(__file__).resolve().parent / "configs"  # the real families' UNet configs
# ControlNetModel.from_unet copies these from the UNet's config
_FROM_UNET = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
              "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
              "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
              "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
              "resnet_time_scale_shift", "projection_class_embeddings_input_dim", "mid_block_type",
              "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
              "addition_time_embed_dim")


def from_components(cls, pipe, **extra):
    """A ``cls`` pipeline made of ``pipe``'s modules and settings (``extra`` adds or replaces)."""
    params = inspect.signature(cls.__init__).parameters
    components = pipe.components
    kwargs = {name: module for name, module in components.items() if name in params}
    for name, value in pipe.config.items():  # settings such as force_zeros_for_empty_prompt
        if name in params and name not in components and not name.startswith("_"):
            kwargs[name] = value
    kwargs.update({name: value for name, value in extra.items() if name in params})
    derived = cls(**kwargs)
    derived.set_progress_bar_config(disable=True)
    return derived


# -- ControlNets ------------------------------------------------------------------------------------
def unet_config(runner, arch: str) -> dict:
    """The UNet config of ``arch``: a tiny arch's from its built model, a real family's from engine/configs."""
    from farm.models.catalog import TINY_ARCHS

    if arch in TINY_ARCHS:
        from engine.sources import resolve

        directory = Path(resolve(f"builtin:{arch}", runner.model_cache).path)
    else:
        directory = CONFIGS / arch
    return json.loads((directory / "unet" / "config.json").read_text())


def conditioning_channels(state: dict) -> tuple[int, ...]:
    """The widths of a ControlNet's control-image embedding, read off its weights (diffusers or LDM keys)."""
    if "controlnet_cond_embedding.conv_in.weight" in state:
        keys = ["controlnet_cond_embedding.conv_in.weight"] + [
            f"controlnet_cond_embedding.blocks.{i}.weight" for i in range(1, 64, 2)]
    else:
        prefix = "control_model." if any(k.startswith("control_model.") for k in state) else ""
        keys = [f"{prefix}input_hint_block.{i}.weight" for i in range(0, 64, 4)]
    return tuple(int(state[k].shape[0]) for k in keys if k in state)


def controlnet_config(unet: dict, channels: tuple[int, ...]) -> dict:
    """A ControlNet's config as ``ControlNetModel.from_unet`` makes it from the UNet's."""
    config = {k: unet[k] for k in _FROM_UNET if k in unet}
    config.update(conditioning_embedding_out_channels=list(channels), controlnet_conditioning_channel_order="rgb",
                  conditioning_channels=3)
    return config


def load_single_file(path: str, arch: str, runner):
    """A ControlNet from one .safetensors file (diffusers or LDM keys), offline."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    state = load_file(path)
    config = controlnet_config(unet_config(runner, arch), conditioning_channels(state))
    state = convert_controlnet_checkpoint(state, config)
    model = ControlNetModel.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        detail = (missing or unexpected)[0]
        raise InputError("controlnet", f"{path}: not a ControlNet for {arch} models ({len(missing)} weights missing, "
                                       f"{len(unexpected)} unexpected, e.g. {detail})")
    return model.to(runner.dtype)


class ControlNets:
    """The ControlNets a worker holds, least recently used dropped (with the pipelines using it)."""

    def __init__(self, runner, max_loaded: int = MAX_CONTROLNETS):
        self.runner = runner
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, Any] = OrderedDict()
        self.digests: dict[str, str | None] = {}

    def entry(self, name: str):
        runner = self.runner
        if name not in runner.catalog.controlnets:
            runner.catalog = runner._load_catalog()  # registered after this worker started?
        entry = runner.catalog.controlnets.get(name)
        if entry is None:
            raise InputError("controlnet", f"unknown ControlNet {name!r} (removed since the job was submitted?)")
        return entry

    def get(self, name: str):
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        from diffusers import ControlNetModel

        runner = self.runner
        entry = self.entry(name)
        location = runner._resolve(entry)
        if location.single_file:
            model = load_single_file(location.path, entry.arch, runner)
        else:
            model = ControlNetModel.from_pretrained(
                location.path, revision=entry.revision if location.is_hub else None, dtype=runner.dtype,
                cache_dir=str(runner.model_cache / "hub"), use_safetensors=True)
        model.to(runner.device)  # on the device even with offload: nothing hooks it there
        if runner.is_cuda:
            model.to(memory_format=runner.torch.channels_last)
        model.eval()
        while len(self.loaded) >= self.max_loaded:
            old, _ = self.loaded.popitem(last=False)
            for resident in runner.resident.values():
                resident.derived.pop(("controlnet", old), None)
        self.loaded[name] = model
        self.digests[name] = entry.sha256
        return model


# -- one micro-batch ----------------------------------------------------------------------------------
@dataclass
class KindCall:
    """How the runner calls the kind's pipeline for one micro-batch."""

    pipe: Any
    kwargs: dict  # the kind's pipeline arguments (images, strength, size)
    finish: Callable | None = None  # uint8 pixels (n, H, W, 3) -> uint8 pixels: the inpaint overlay
    environment: dict = field(default_factory=dict)


def pipeline_for(runner, resident, kind: str, controlnet: str | None):
    """The resident model's pipeline for ``kind`` (built once, from its components)."""
    key = (kind, controlnet if kind == "controlnet" else None)
    if key not in resident.derived:
        build = getattr(resident.family, "for_kind", None)
        if build is None:
            raise InputError("kind", f"{kind} jobs need a UNet family; this model's pipeline has none")
        model = runner.controlnets.get(controlnet) if kind == "controlnet" else None
        resident.derived[key] = build(resident.pipe, kind, model)
    return resident.derived[key]


def prepare(runner, resident, jobs: list, rows: int, timings: dict) -> KindCall:
    """The kind's pipeline and arguments for ``jobs`` (one group key), padded to ``rows``."""
    from PIL import Image

    first = jobs[0]
    started = time.perf_counter()
    pipe = pipeline_for(runner, resident, first.kind, first.controlnet)
    timings["model_load_ms"] = timings.get("model_load_ms", 0.0) + (time.perf_counter() - started) * 1000
    pipe.scheduler = resident.pipe.scheduler  # the recipe's fresh scheduler for this call
    started = time.perf_counter()
    misses = runner.inputs.stats["misses"]
    size = (first.width, first.height)
    images: dict[str, Any] = {}

    def load(sha256: str):
        if sha256 not in images:
            image = runner.inputs.image(sha256)
            # "Just resize", as A1111 calls it; an upscale's whole first half (kinds.UPSCALER)
            images[sha256] = image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
        return images[sha256]

    def padded(values: list) -> list:
        return values + [values[0]] * (rows - len(values))  # padding rows repeat the first job's

    kwargs: dict = {}
    finish = None
    environment: dict = {}
    if first.kind in ("img2img", "upscale"):
        kwargs = {"image": padded([load(j.init_image) for j in jobs]), "strength": first.strength}
    elif first.kind == "inpaint":
        inits = [load(j.init_image) for j in jobs]
        masks = [load(j.mask_image) for j in jobs]
        if first.mask_blur:
            masks = [pipe.mask_processor.blur(m, blur_factor=first.mask_blur) for m in masks]
        kwargs = {"image": padded(inits), "mask_image": padded(masks), "strength": first.strength,
                  "width": first.width, "height": first.height}

        def finish(pixels):
            import numpy as np

            return np.stack([np.asarray(pipe.image_processor.apply_overlay(mask, init, Image.fromarray(p)))
                             for p, init, mask in zip(pixels, inits, masks)])
    elif first.kind == "controlnet":
        kwargs = {"image": padded([load(j.control_image) for j in jobs]),
                  "controlnet_conditioning_scale": first.control_scale, "width": first.width, "height": first.height}
        environment["controlnet_sha256"] = {first.controlnet: runner.controlnets.digests.get(first.controlnet)}
    else:
        raise InputError("kind", f"{first.kind!r} is not an image kind")
    timings["input_fetch_ms"] = (time.perf_counter() - started) * 1000
    environment["inputs_fetched"] = runner.inputs.stats["misses"] - misses
    return KindCall(pipe, kwargs, finish, environment)
