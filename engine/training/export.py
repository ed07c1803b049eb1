"""A distillation's result as files: the LoRA in diffusers' layout (``save_lora_weights``) or the
full student UNet's weights, both safetensors, in the pipeline's dtype."""

from __future__ import annotations

import tempfile
from pathlib import Path

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_bytes(pipe, unet, config, dtype) -> bytes:
    """The trained adapter as a diffusers LoRA safetensors file (``save_lora_weights``)."""
    from peft.utils import get_peft_model_state_dict

    layers = {k: v.detach().to("cpu", dtype).contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    metadata = None
    if config.lora_alpha != config.r:  # the file must say so, or the loader assumes alpha == rank
        metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    with tempfile.TemporaryDirectory(prefix="farm-distill-") as tmp:
        type(pipe).save_lora_weights(tmp, unet_lora_layers=layers, weight_name=LORA_WEIGHT_NAME,
                                     safe_serialization=True, unet_lora_adapter_metadata=metadata)
        return (Path(tmp) / LORA_WEIGHT_NAME).read_bytes()


def unet_bytes(unet, dtype) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()})
