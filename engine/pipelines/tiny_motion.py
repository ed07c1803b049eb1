"""Tiny motion modules for tiny-sd, built locally like the tiny models (no hub here; issue 27).

A ``MotionAdapter`` holds AnimateDiff's temporal layers, one stack per UNet block, as wide as the
UNet's blocks (tiny-sd's: 32 and 64 channels, one layer per block). Its weights stay seeded and
random: nothing here learns motion, but the temporal attention really mixes the frames of a clip,
so a test can tell whether the module ran. The output projections are scaled down so the trained
tiny-sd still draws its shapes through them.
"""

from __future__ import annotations

from pathlib import Path

TINY_MOTION_CONFIG = {
    "block_out_channels": (32, 64), "motion_layers_per_block": 1, "motion_mid_block_layers_per_block": 1,
    "motion_num_attention_heads": 4, "motion_norm_num_groups": 32, "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}
OUTPUT_SCALE = 0.1  # proj_out: the temporal layers' residual stays small beside the UNet's features


def build_tiny_motion(directory: Path, *, seed: int) -> None:
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(**TINY_MOTION_CONFIG)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if ".proj_out." in name:
                parameter.mul_(OUTPUT_SCALE)
    directory.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(str(directory), safe_serialization=True)


def ensure_tiny_motion(name: str, cache_dir: Path, *, seed: int) -> Path:
    """Build the tiny motion module ``name`` once; its directory."""
    from engine.pipelines import tiny

    return tiny._build_once(Path(cache_dir) / name, lambda tmp: build_tiny_motion(tmp, seed=seed))
