"""A renderer that sleeps instead of running a model: for fault tests and queue benchmarks.

It never imports torch, so a worker using it starts in about a second. It honours the same
contract as the diffusion runner: one call per micro-batch, interruptible between "steps", pixels
that depend only on each job's seed. A prompt containing ``POISON`` kills the process mid-render,
as a job that crashes its worker would.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from engine.runner import Interrupted, Rendered

STEP_S = 0.02


class SleepRenderer:
    def __init__(self, seconds_per_image: float):
        self.seconds = seconds_per_image

    def render(self, jobs: list, should_stop: Callable[[], str | None] | None = None) -> Rendered:
        import numpy as np

        deadline = time.monotonic() + self.seconds * len(jobs)
        step = 0
        while True:
            if any("POISON" in j.prompt for j in jobs) and step >= 2:
                os._exit(86)  # a job that takes its worker down with it
            reason = should_stop() if should_stop else None
            if reason:
                raise Interrupted(f"{reason} at step {step + 1}", reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(STEP_S, remaining))
            step += 1
        pixels = [_texture(np, j.seed, j.height, j.width) for j in jobs]
        return Rendered(pixels, {"denoise_ms": self.seconds * len(jobs) * 1000}, len(jobs), "sleep",
                        {"device": "cpu", "renderer": f"sleep:{self.seconds:g}"})

    def resident_models(self) -> list[str]:
        return []

    def resident_adapters(self) -> list[str]:
        return []


def _texture(np, seed: int, height: int, width: int):
    """Pixels that depend only on the seed and compress about as well as a rendered image (a
    gradient with grain), so PNG encoding and upload cost what they would for a real render."""
    rng = np.random.default_rng(seed)
    ramp = (np.linspace(0, 160, width, dtype=np.float32)[None, :, None]
            + np.linspace(0, 64, height, dtype=np.float32)[:, None, None])
    grain = rng.integers(0, 32, (height, width, 3), dtype=np.uint8)
    return (ramp + grain + seed % 32).clip(0, 255).astype(np.uint8)

