"""Tiny ControlNets for the tiny archs, built locally like the tiny models (no hub here).

A ControlNet is a trainable copy of a UNet's encoder (``ControlNetModel.from_unet``). Two facts
shape the builder:

- ``from_unet`` copies the UNet's layers as they are, so it must run on a UNet freshly loaded from
  the tiny model's directory, before any LoRA is loaded into it (peft would have wrapped its
  attention projections, and the copy would carry LoRA layers or fail to load).
- A fresh ControlNet's output layers are zero (``controlnet_down_blocks``, ``controlnet_mid_block``
  and the conditioning embedding's ``conv_out``, as in training's "zero convolutions"), so it
  changes nothing: every residual it adds is 0 and a test could not tell whether it ran. They get
  small seeded random weights here, as a trained ControlNet has, so the control image visibly
  steers the result.
"""

from __future__ import annotations

from pathlib import Path

# the control image is embedded down to the latent size in three stride-2 steps (a factor of 8, the
# tiny VAE's); narrower than the real (16, 32, 96, 256) to stay cheap
TINY_CONDITIONING_CHANNELS = (8, 16, 16, 32)
OUTPUT_STD = 0.05  # the output layers' weights: visible, and images stay finite


def build_tiny_controlnet(model_dir: Path, directory: Path, *, seed: int) -> None:
    """A ControlNet for the tiny model in ``model_dir``, saved with ``save_pretrained``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")  # fresh: no LoRA
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS)
    generator = torch.Generator().manual_seed(seed)
    outputs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
               controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for layer in outputs:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * OUTPUT_STD)
            if layer.bias is not None:
                layer.bias.zero_()
    directory.mkdir(parents=True, exist_ok=True)
    controlnet.save_pretrained(str(directory), safe_serialization=True)


def ensure_tiny_controlnet(model_name: str, name: str, cache_dir: Path, *, seed: int) -> Path:
    """Build the tiny ControlNet ``name`` for the tiny model ``model_name`` once; its directory."""
    from engine.pipelines import tiny

    model_dir = tiny.ensure_tiny_model(model_name, cache_dir)
    return tiny._build_once(Path(cache_dir) / name,
                            lambda tmp: build_tiny_controlnet(model_dir, tmp, seed=seed))
