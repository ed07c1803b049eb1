"""The numbers a distillation is judged by, from per-sample values (numpy only).

Every sampler is compared sample by sample with the teacher's 50-step render *from the same
initial noise* (a paired error), so the spread between prompts and seeds cancels out and a few
dozen samples separate samplers that a distribution distance on pooled latents cannot. Each mean
comes with a 95% bootstrap interval over the samples (percentile method, a fixed seed, so a table
is reproducible), and a comparison of two samplers is a paired bootstrap of their per-sample
differences: a difference whose interval excludes 0 is a win or a loss, anything else a tie.
"""

from __future__ import annotations

BOOTSTRAP = 2000  # resamples per interval
BOOTSTRAP_SEED = 0


def interval(values, *, resamples: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict:
    """{"mean", "ci95": [lo, hi], "n"} of per-sample ``values`` (the mean's percentile bootstrap)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"need at least 2 per-sample values, got {values.shape}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(values.mean()), 6), "ci95": [round(float(lo), 6), round(float(hi), 6)],
            "n": int(len(values))}


def paired(a, b, *, lower_is_better: bool = True) -> dict:
    """``a`` against ``b`` on the same samples: the mean of ``a - b`` with its interval, and the
    verdict for ``a`` ("better", "worse" or "tie" when the interval holds 0)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    diff = interval(a - b)
    lo, hi = diff["ci95"]
    if lo <= 0 <= hi:
        verdict = "tie"
    else:
        verdict = "better" if (hi < 0) == lower_is_better else "worse"
    return {"mean_difference": diff["mean"], "ci95": diff["ci95"], "verdict": verdict}


def latent_mse(latents, reference):
    """Per-sample mean squared difference of final latents (N, C, h, w) -> (N,)."""
    import numpy as np

    a, b = np.asarray(latents, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def pixel_rmse(images, reference):
    """Per-sample root mean squared difference of decoded images (N, H, W, 3) in 0..255 -> (N,)."""
    import numpy as np

    a, b = np.asarray(images, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def task_hits(images, prompts) -> "list[float] | None":
    """1.0 where an image shows its prompt's colour and shape (``engine.training.shapes.describe``,
    a reader of the tiny teacher's vocabulary), else 0.0; None when a prompt is outside it."""
    from engine.training import shapes

    try:
        wanted = [shapes.parse_caption(p) for p in prompts]
    except ValueError:
        return None
    return [1.0 if shapes.describe(image) == want else 0.0 for image, want in zip(images, wanted)]
