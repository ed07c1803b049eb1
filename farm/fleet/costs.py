"""What a job costs in GPU time, before it runs (issue 24): the median measured time per image for
the same model, recipe, size and steps (other step counts scaled), else a default scaled by pixels
and steps. Fair share charges it at dispatch, quotas reserve it at submission, and the fleet's
backlog in GPU-seconds is the sum of it over queued jobs."""

from __future__ import annotations

import time
from typing import Callable

DEFAULT_IMAGE_MS = 1000.0  # a 512x512 image at 4 steps, until its settings have a measured time
TTL_S = 30.0


def default_image_ms(width: int, height: int, steps: int) -> float:
    return DEFAULT_IMAGE_MS * width * height / (512 * 512) * max(1, steps) / 4


class CostModel:
    """Estimates per settings, read from the ledger at most every ``ttl_s`` seconds each."""

    def __init__(self, ledger, *, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ledger, self.ttl_s, self.clock = ledger, ttl_s, clock
        self._cache: dict[tuple, tuple[float, float]] = {}

    def image_ms(self, spec) -> float:
        key = (spec.model, spec.recipe, spec.width, spec.height, spec.steps)
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        ms = self.ledger.gpu_ms_per_image(model=spec.model, recipe=spec.recipe, width=spec.width,
                                          height=spec.height, steps=spec.steps)
        if ms is None:
            ms = default_image_ms(spec.width, spec.height, spec.steps)
        self._cache[key] = (ms, now)
        return ms
