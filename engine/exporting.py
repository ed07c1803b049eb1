"""A full-model distillation's result as a diffusers model directory (issue 14).

The student UNet (all weights distilled, with the guidance embedding the LCM student has) goes
into a copy of the teacher's pipeline in place of the teacher's UNet, with ``LCMScheduler`` as
its scheduler: a model of kind ``lcm`` that loads like any other diffusers directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def lcm_model_files(pipe, unet_config: dict, unet_weights: bytes, original_inference_steps: int) -> dict[str, bytes]:
    """Every file of the LCM model directory (relative path -> bytes)."""
    from diffusers import LCMScheduler, UNet2DConditionModel
    from safetensors.torch import load

    unet = UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict(load(unet_weights))
    scheduler = LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=original_inference_steps)
    components = {**pipe.components, "unet": unet, "scheduler": scheduler}
    student = type(pipe)(**components)
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as folder:
        student.save_pretrained(folder, safe_serialization=True)
        for root, _dirs, names in os.walk(folder):
            for name in names:
                path = Path(root) / name
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files
