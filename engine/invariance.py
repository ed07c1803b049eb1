"""Batch-invariant small matrix products on the CPU.

A 2-D input to a linear layer has one row per image (the timestep embedding, SDXL's pooled text
and size conditioning, and the LoRA layers on them). CPU GEMM kernels block those rows by the
batch size: on AVX-512 machines the rows of an 8-row product that fall in the kernel's tail
block (rows 6 and 7) round differently from the same row in a 4-row product, so an image's
pixels changed by one level depending on where it sat in its micro-batch. Computing those
products in chunks of exactly ``rows`` rows (the runner's batch bucket, so a padded call of one
bucket is computed exactly as a plain diffusers call of that size) makes each row's arithmetic
the same whatever the batch; they are a vanishing share of the work (measured: no change in the
time per micro-batch of 8 on tiny-sd). Token-wise products (3-D inputs, thousands of rows) are
left alone.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_saved: list = []  # nn.Linear's own forward while the patch is on
patch = setattr  # (named, so the patching reads as what it is)
_depth = 0
_chunk = 1


@contextmanager
def row_wise_linear(rows: int) -> Iterator[None]:
    """Within this block, ``nn.Linear`` computes 2-D inputs in chunks of ``rows`` rows (callers
    pad their batches to a multiple of it)."""
    global _depth, _chunk
    import torch
    import torch.nn.functional as F

    with _lock:
        if _depth == 0:
            original = torch.nn.Linear.forward

            def forward(self, input):  # noqa: A002 - nn.Linear.forward's name: the motion modules pass input=
                x = input
                n = _chunk
                if x.dim() == 2 and x.shape[0] > n and x.shape[0] % n == 0:
                    return torch.cat([F.linear(x[i:i + n], self.weight, self.bias) for i in range(0, x.shape[0], n)])
                return original(self, x)

            _saved.append(original)
            patch(torch.nn.Linear, "forward", forward)
        _chunk = max(1, rows)  # one renderer per worker process: one bucket
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                patch(torch.nn.Linear, "forward", _saved.pop())
