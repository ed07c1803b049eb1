"""A procedurally generated captioned image set: one coloured shape on a plain background.

64x64 RGB images of a circle, square or triangle in one of five colours, at a random position and
size, on a dark grey background with a mild gradient; the caption names both ("a red circle").
Everything is deterministic from a seed (numpy's ``default_rng``), so a training run and a test
see the same images. ``describe`` reads an image back (the shape's colour and outline), so a test
can check that a render of "a red circle" shows a red circle. numpy only; PIL only to write PNGs.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

SIZE = 64
# Saturated, well separated colours (RGB); each image jitters them a little.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 40),
    "green": (45, 190, 60),
    "blue": (45, 85, 230),
    "yellow": (235, 210, 45),
    "white": (235, 235, 235),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
CAPTIONS = tuple(f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES)
VOCAB = ("a",) + COLOURS + SHAPES

_SUPERSAMPLE = 4  # coverage from a 4x4 grid per pixel: anti-aliased edges


def parse_caption(caption: str) -> tuple[str, str]:
    """``"a red circle"`` -> ``("red", "circle")``; a caption outside the set raises ValueError."""
    words = caption.strip().lower().split()
    if len(words) != 3 or words[0] != "a" or words[1] not in PALETTE or words[2] not in SHAPES:
        raise ValueError(f"not a shapes caption: {caption!r} (expected 'a <colour> <shape>')")
    return words[1], words[2]


def _coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Fraction of each pixel covered by the shape (HxW floats in [0, 1])."""
    s = _SUPERSAMPLE
    coords = (np.arange(SIZE * s) + 0.5) / s
    x, y = np.meshgrid(coords, coords)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        half = r * 0.9  # a square of the same area as the circle is 0.89 r per half side
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":
        # Upright isosceles triangle in the box [cx-r, cx+r] x [cy-r, cy+r], apex at the top.
        top, bottom = cy - r, cy + r
        t = (y - top) / (bottom - top)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(x - cx) <= r * t)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))


def render(colour: str, shape: str, rng: np.random.Generator) -> np.ndarray:
    """One image (uint8, 64x64x3) of ``shape`` in ``colour``, placed and sized by ``rng``."""
    r = rng.uniform(11.0, 20.0)
    cx, cy = rng.uniform(r + 2, SIZE - r - 2, size=2)
    # Background: dark grey (slightly tinted) with a mild linear gradient in a random direction.
    base = rng.uniform(25, 75) + rng.uniform(-6, 6, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = rng.uniform(0, 20)
    grid = (np.arange(SIZE) - SIZE / 2) / SIZE
    gx, gy = np.meshgrid(grid, grid)
    background = base[None, None, :] + (ramp * (np.cos(angle) * gx + np.sin(angle) * gy))[..., None]
    fill = np.clip(np.array(PALETTE[colour], dtype=np.float64) + rng.uniform(-15, 15, size=3), 0, 255)
    alpha = _coverage(shape, cx, cy, r)[..., None]
    image = background * (1 - alpha) + fill[None, None, :] * alpha
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def sample(rng: np.random.Generator | int, n: int) -> list[tuple[np.ndarray, str]]:
    """``n`` (image, caption) pairs; colour and shape uniform over the set. ``rng``: a seed or a
    numpy Generator (which advances)."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    out = []
    for _ in range(n):
        colour = COLOURS[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        out.append((render(colour, shape, rng), f"a {colour} {shape}"))
    return out


def write_dataset(directory: Path | str, n: int, seed: int = 0) -> Path:
    """``n`` pairs as ``0000.png`` + ``0000.txt`` (the layout LoRA trainers read); returns the folder."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n - 1)))
    for i, (pixels, caption) in enumerate(sample(seed, n)):
        stem = f"{i:0{width}d}"
        Image.fromarray(pixels).save(directory / f"{stem}.png")
        (directory / f"{stem}.txt").write_text(caption + "\n")
    return directory


# -- reading an image back ---------------------------------------------------------------------------

def _background(pixels: np.ndarray) -> np.ndarray:
    """The background colour: the median of the 2-pixel border (shapes never touch it)."""
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    return np.median(border, axis=0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def foreground(pixels: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Mask (HxW bool) of the shape: the largest region far (in RGB) from the border's colour."""
    pixels = np.asarray(pixels, dtype=np.float64)[..., :3]
    distance = np.linalg.norm(pixels - _background(pixels), axis=-1)
    return _largest_component(distance > threshold)


def dominant_colour(pixels: np.ndarray, min_fraction: float = 0.03) -> str | None:
    """The palette colour most of the shape's pixels are nearest to; None when no shape stands
    out from the background (under ``min_fraction`` of the image)."""
    mask = foreground(pixels)
    if mask.mean() < min_fraction:
        return None
    shape_pixels = np.asarray(pixels, dtype=np.float64)[..., :3][mask]
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    nearest = np.argmin(((shape_pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    return COLOURS[np.bincount(nearest, minlength=len(COLOURS)).argmax()]


def dominant_shape(pixels: np.ndarray, min_fraction: float = 0.03) -> str | None:
    """The shape's outline from how much of its bounding box it fills: a square ~1, a circle
    ~0.79 (pi/4), a triangle ~0.5. None when no shape stands out."""
    mask = foreground(pixels)
    if mask.mean() < min_fraction:
        return None
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    if fill >= 0.89:
        return "square"
    return "circle" if fill >= 0.64 else "triangle"


def describe(pixels: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) as read from the image; either is None when no shape stands out."""
    return dominant_colour(pixels), dominant_shape(pixels)


def caption_matches(pixels: np.ndarray, caption: str, *, shape: bool = False) -> bool:
    """Whether the image shows the caption's colour (and, with ``shape``, its outline too)."""
    want_colour, want_shape = parse_caption(caption)
    if dominant_colour(pixels) != want_colour:
        return False
    return not shape or dominant_shape(pixels) == want_shape
