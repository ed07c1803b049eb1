"""Input images (issue 13): checked and made canonical at submission, fetched and cached by workers.

The producer calls ``check_image`` on purpose (farm.jobs.inputs) for every init image, mask and control
image a submission names, before anything is written: the bytes must decode as PNG, JPEG or WebP,
whole (a truncated file is refused), within the size limits, and never as a decompression bomb
(PIL's ``MAX_IMAGE_PIXELS`` is set to the limit and its bomb warning is an error, so a header that
claims a huge image is refused before any pixel is decoded). What is kept is a canonical PNG of the
decoded pixels (RGB; masks grayscale; EXIF orientation applied; no metadata), addressed by its
sha256: the same pixels from the same file always get the same name, so the same input and
settings are the same job and reuse its image.

``canny`` computes a ControlNet's edge map at submission, with numpy (no OpenCV): Sobel 3x3
gradients, their L1 magnitude, non-maximum suppression along four directions and hysteresis
between two thresholds, as ``cv2.Canny`` computes it.

Workers fetch an input from the farm's store (``inputs/<sha256>.png``) once and keep it in their
model cache (``<cache>/inputs/<sha256>.png``); every read is checked against the sha256.

PIL and numpy are imported lazily: ``import farm`` never loads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import InfrastructureError, InputError
from farm.jobs.kinds import MAX_INPUT_BYTES, input_key

if TYPE_CHECKING:
    from farm.storage import Store

MAX_INPUT_PIXELS = 4096 * 4096  # decoded; PIL refuses twice this at open as a bomb, we refuse past it
MIN_INPUT_SIDE = 8
FORMATS = ("PNG", "JPEG", "WEBP")
PNG_LEVEL = 6


@dataclass(frozen=True)
class CheckedImage:
    sha256: str  # of ``data``
    data: bytes  # the canonical PNG
    width: int
    height: int


@contextlib.contextmanager
def _limits():
    """PIL with the farm's pixel limit, its bomb warning raised as an error, and no tolerance for
    truncated files (restored afterwards)."""
    from PIL import Image, ImageFile

    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = MAX_INPUT_PIXELS, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def canonical_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def decode(field: str, data: bytes, name: str, *, mask: bool = False):
    """The image in ``data`` as a loaded PIL image (RGB, or L for a mask), or an ``InputError``
    naming ``field`` and ``name`` (the file, URI or job it came from)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_INPUT_BYTES:
        raise InputError(field, f"{name}: {len(data)} bytes; the limit is {MAX_INPUT_BYTES}")
    image: Image.Image
    with _limits():
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise InputError(field, f"{name}: not an image (PNG, JPEG or WebP)") from None
        except Image.DecompressionBombError as exc:
            raise InputError(field, f"{name}: refused as a decompression bomb ({exc})") from None
        except Image.DecompressionBombWarning as exc:
            raise InputError(field, f"{name}: over the limit of {MAX_INPUT_PIXELS} pixels ({exc})") from None
        width, height = image.size
        if width * height > MAX_INPUT_PIXELS:  # (PIL's check covers this; kept for a clear message)
            raise InputError(field, f"{name}: {width}x{height} is over the limit of {MAX_INPUT_PIXELS} pixels")
        if min(width, height) < MIN_INPUT_SIDE:
            raise InputError(field, f"{name}: {width}x{height} is smaller than {MIN_INPUT_SIDE} pixels a side")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except Image.DecompressionBombWarning as exc:
            raise InputError(field, f"{name}: over the limit of {MAX_INPUT_PIXELS} pixels ({exc})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(field, f"{name}: truncated or corrupt {image.format} image ({exc})") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels are black underneath, as A1111 flattens them
        image = image.convert("RGBA")
        flat = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(flat, image)
    return image.convert("L" if mask else "RGB")


def check_image(field: str, data: bytes, name: str, *, mask: bool = False,
                preprocess: str | None = None) -> CheckedImage:
    """Decode and check an input image; its canonical PNG and sha256. ``preprocess="canny"``: the
    image's edge map instead (a ControlNet's control image)."""
    image = decode(field, data, name, mask=mask)
    if preprocess == "canny":
        image = canny(image)
    elif preprocess is not None:
        raise InputError("control_preprocess", f"{preprocess!r} is not a preprocessor (known: canny)")
    png = canonical_png(image)
    return CheckedImage(hashlib.sha256(png).hexdigest(), png, image.width, image.height)


# -- canny edges ------------------------------------------------------------------------------------
def canny_edges(gray, low: int = 100, high: int = 200):
    """Edges of a grayscale uint8 image (HxW) as 0/255 uint8, computed as ``cv2.Canny(gray, low,
    high)`` does: 3x3 Sobel gradients (borders reflected), L1 magnitude, non-maximum suppression
    along the gradient's direction (quantised to 0, 45, 90, 135 degrees), then hysteresis: pixels
    above ``high`` are edges, and pixels above ``low`` joined to an edge (8-connected) are too."""
    import numpy as np

    g = np.pad(gray.astype(np.int32), 1, mode="reflect")
    gx = (g[:-2, 2:] + 2 * g[1:-1, 2:] + g[2:, 2:]) - (g[:-2, :-2] + 2 * g[1:-1, :-2] + g[2:, :-2])
    gy = (g[2:, :-2] + 2 * g[2:, 1:-1] + g[2:, 2:]) - (g[:-2, :-2] + 2 * g[:-2, 1:-1] + g[:-2, 2:])
    magnitude = np.abs(gx) + np.abs(gy)
    m = np.pad(magnitude, 1, mode="constant")
    ax, ay = np.abs(gx).astype(np.float64), np.abs(gy).astype(np.float64)
    tan22, tan67 = 0.4142135623730951, 2.414213562373095
    horizontal = ay <= ax * tan22  # the gradient points along x: compare left and right
    vertical = ay > ax * tan67
    diagonal = ~(horizontal | vertical)
    rising = (gx * gy) > 0  # both the same sign: compare up-left and down-right
    h, w = magnitude.shape

    def at(dy: int, dx: int):
        return m[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    keep = np.zeros_like(horizontal)
    keep |= horizontal & (magnitude > at(0, -1)) & (magnitude >= at(0, 1))
    keep |= vertical & (magnitude > at(-1, 0)) & (magnitude >= at(1, 0))
    keep |= diagonal & rising & (magnitude > at(-1, -1)) & (magnitude >= at(1, 1))
    keep |= diagonal & ~rising & (magnitude > at(-1, 1)) & (magnitude >= at(1, -1))
    candidate = keep & (magnitude > low)
    edges = candidate & (magnitude > high)
    stack = list(zip(*np.nonzero(edges)))
    while stack:  # grow the strong edges through the weak candidates, 8-connected
        y, x = stack.pop()
        for ny in (y - 1, y, y + 1):
            for nx in (x - 1, x, x + 1):
                if 0 <= ny < h and 0 <= nx < w and candidate[ny, nx] and not edges[ny, nx]:
                    edges[ny, nx] = True
                    stack.append((ny, nx))
    return edges.astype(np.uint8) * 255


def canny(image, low: int = 100, high: int = 200):
    """A ControlNet's canny control image: white edges on black, RGB, the image's size."""
    import numpy as np
    from PIL import Image

    edges = canny_edges(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


# -- workers: fetch once, cache by sha256 ------------------------------------------------------------
class InputCache:
    """Input images a worker renders from: fetched from the farm's store once, kept under
    ``cache_dir`` by sha256, and checked against it on every read."""

    def __init__(self, cache_dir: Path, store_url: str | None, *, s3_endpoint_url: str | None = None):
        self.cache_dir = Path(cache_dir)
        self.store_url = store_url
        self.s3_endpoint_url = s3_endpoint_url
        self._store: Store | None = None
        self.stats = {"hits": 0, "misses": 0}

    @property
    def store(self):
        if self._store is None:
            if not self.store_url:
                raise InputError("init_image", "this renderer has no store to fetch input images from")
            from farm.storage import open_store

            self._store = open_store(self.store_url, s3_endpoint_url=self.s3_endpoint_url)
        return self._store

    def path(self, sha256: str) -> Path:
        return self.cache_dir / f"{sha256}.png"

    def data(self, sha256: str) -> bytes:
        """The stored PNG of an input, from the cache or (once) from the store; verified."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None and hashlib.sha256(data).hexdigest() == sha256:
            self.stats["hits"] += 1
            return data
        data = self.store.get(input_key(sha256))
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise InfrastructureError(f"{input_key(sha256)}: stored input does not match its name "
                                      f"(sha256 {digest[:12]})")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)  # concurrent workers write the same bytes: last one wins, harmlessly
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats["misses"] += 1
        return data

    def image(self, sha256: str):
        """The input as a loaded PIL image (as stored: RGB, or L for a mask)."""
        from PIL import Image

        with _limits():
            image = Image.open(io.BytesIO(self.data(sha256)), formats=("PNG",))
            image.load()
        return image
