"""Running a pipeline on a GPU smaller than the pipeline: diffusers' CPU offload and VAE tiling.

- ``model``: each component (text encoders, UNet, VAE) moves to the device when it runs and back
  to host RAM after; SDXL fits an 8 GB card at a small cost per image.
- ``sequential``: each layer moves to the device for its forward and back (to the meta device)
  after; the least memory, much slower.

Either way rendering runs under plain ``no_grad``, not inference mode: weights moved by the
hooks inside inference mode become inference tensors, which peft can no longer touch when the
next adapter loads (and which cannot become parameters again when a layer moves back).
- VAE tiling and slicing decode large images in tiles and a batch one image at a time.

LoRA changes: diffusers' ``load_lora_weights`` takes the offload hooks off and puts them back
with the default accelerator, which does not exist on a CPU-only machine; the runner instead
takes the hooks off itself around every adapter change and puts them back on its own device.
"""

from __future__ import annotations

import contextlib
from typing import Any

MODES = ("none", "model", "sequential")


def check(mode: str, device_type: str) -> None:
    from farm.errors import ConfigError

    if mode not in MODES:
        raise ConfigError("FARM_OFFLOAD", f"{mode!r} is not one of {', '.join(MODES)}")
    if mode == "sequential" and device_type != "cuda":
        # measured: accelerate's per-layer hooks with the CPU as the execution device leave some
        # weights as plain tensors and fail on the next layer; there is nothing to offload anyway
        raise ConfigError("FARM_OFFLOAD", "sequential offload needs a CUDA device (a CPU worker holds every "
                                          "weight in host RAM already)")


def enable(pipe: Any, mode: str, device) -> None:
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)


@contextlib.contextmanager
def hooks_off(pipe: Any, mode: str, device):
    """Take the offload hooks off for an adapter change; the weights are in host RAM meanwhile."""
    if mode == "none":
        yield
        return
    pipe.remove_all_hooks()
    if mode == "sequential":  # layers left on the meta device come back to host RAM first
        pipe.to("cpu")
    try:
        yield
    finally:
        enable(pipe, mode, device)


def grad_mode(mode: str):
    """The autograd mode rendering runs in (see the module's note on sequential offload)."""
    import torch

    return torch.inference_mode() if mode == "none" else torch.no_grad()


def enable_vae_tiling(pipe: Any) -> None:
    pipe.vae.enable_tiling()  # (the pipeline-level shortcuts are gone from diffusers)
    pipe.vae.enable_slicing()
