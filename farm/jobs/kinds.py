"""Jobs that start from images (issue 13): what each kind takes, checked and completed. Pure.

- ``img2img``: an init image, noised to ``strength`` and denoised back; diffusers runs
  ``int(steps x strength)`` of the ``steps`` denoising steps (both are recorded).
- ``inpaint``: an init image and a mask of the same size (white: repaint, black: keep), optionally
  blurred (``mask_blur``); the kept pixels are the init image's, exactly (A1111's overlay).
- ``controlnet``: a control image (edges, depth, pose) that a registered ControlNet of the model's
  arch turns into residuals for the UNet, at ``control_scale``; ``control_preprocess canny``
  computes the edges at submission.
- ``upscale`` (a hires pass): the init image resized by ``upscale`` (Lanczos), then img2img at the
  new size.

Input images reach a job as the sha256 of their stored PNG (``inputs/<sha256>.png`` in the farm's
store); the producer reads, checks and stores them (farm.jobs.inputs, engine.inputs) and hands their
sizes here as ``InputInfo``. A job's size defaults to its input's (rounded down to a multiple of 8);
an upscale's is the init image's times the factor. Image kinds run on the UNet families, whose
pipelines are built from the resident model's components (engine.kinds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from farm.errors import InputError
from farm.models.catalog import ControlNetEntry, ModelEntry

IMAGE_KINDS = ("img2img", "inpaint", "controlnet", "upscale")
KIND_FAMILIES = ("sd15", "sdxl", "ssd-1b")  # the UNet families: diffusers has every kind's pipeline for them
INPUT_FIELDS = ("init_image", "mask_image", "control_image")  # per image: outside the micro-batch key
FLAGS = {"init_image": "--init-image", "mask_image": "--mask", "control_image": "--control-image",
         "strength": "--strength", "mask_blur": "--mask-blur", "controlnet": "--controlnet",
         "control_scale": "--control-scale", "control_preprocess": "--control-preprocess", "upscale": "--scale"}
TAKES = {  # kind -> the request fields it takes
    "txt2img": (),
    "clip": (),  # issue 27: a clip's own options are farm.jobs.clips'; no image input yet
    "img2img": ("init_image", "strength"),
    "inpaint": ("init_image", "mask_image", "strength", "mask_blur"),
    "controlnet": ("control_image", "controlnet", "control_scale", "control_preprocess"),
    "upscale": ("init_image", "strength", "upscale"),
}
NEEDS = {"img2img": ("init_image",), "inpaint": ("init_image", "mask_image"),
         "controlnet": ("control_image", "controlnet"), "upscale": ("init_image",)}
DEFAULT_STRENGTH = {"img2img": 0.75, "inpaint": 1.0, "upscale": 0.5}  # A1111's img2img default; diffusers' inpaint
DEFAULT_UPSCALE = 2.0
MAX_UPSCALE = 4.0
MAX_MASK_BLUR = 64
DEFAULT_CONTROL_SCALE = 1.0
MAX_CONTROL_SCALE = 2.0
PREPROCESSORS = ("canny",)
CANNY_THRESHOLDS = (100, 200)  # low and high, cv2.Canny's as A1111's canny preprocessor calls it
UPSCALER = "Lanczos"  # how an upscale job resizes its init image before the img2img pass
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_INPUT_BYTES = 64 << 20  # an input image file, encoded
INPUT_PREFIX = "inputs/"  # input images live in the farm's store under inputs/<sha256>.png


def input_key(sha256: str) -> str:
    """The store key of an input image (content-addressed: stored once, whoever submits it)."""
    if not SHA256_RE.match(sha256):
        raise InputError("input", f"{sha256!r} is not a sha256")
    return f"{INPUT_PREFIX}{sha256}.png"


@dataclass(frozen=True)
class InputInfo:
    """A stored input image, as the producer found it."""

    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class KindFields:
    """A request's kind, checked: the JobSpec fields it sets and the size its inputs imply."""

    kind: str
    fields: dict = field(default_factory=dict)
    size: tuple[int, int] | None = None  # the default width and height (None: the model's native size)

    def check_steps(self, steps: int) -> None:
        """Refuse a strength that leaves no denoising step of the recipe's ``steps``."""
        strength = self.fields.get("strength")
        if strength is not None and int(steps * strength) < 1:
            raise InputError("strength", f"{strength:g} x {steps} steps runs no denoising step (diffusers runs "
                                         f"int(steps x strength) = {int(steps * strength)}); raise --strength or --steps")


def denoise_steps(kind: str, steps: int, strength: float | None) -> int:
    """The denoising steps that actually run: ``int(steps x strength)`` for the kinds that start
    from a noised image (as diffusers' img2img and inpaint pipelines compute it), else ``steps``."""
    if strength is None or kind not in DEFAULT_STRENGTH:
        return steps
    return min(int(steps * strength), steps)


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def infer_kind(request) -> str:
    """The kind a request asks for: ``kind`` when given, else what its inputs imply."""
    if request.kind is not None:
        return request.kind
    from farm.jobs.clips import clip_flags_given

    if clip_flags_given(request):  # issue 27: --frames, --motion ... ask for a clip
        return "clip"
    if request.mask_image is not None or request.mask_blur is not None:
        return "inpaint"
    if request.control_image is not None or request.controlnet is not None:
        return "controlnet"
    if request.upscale is not None:
        return "upscale"
    if request.init_image is not None or request.strength is not None:
        return "img2img"
    return "txt2img"


def _input(name: str, value: object, inputs: Mapping[str, InputInfo] | None) -> InputInfo:
    if isinstance(value, str) and SHA256_RE.match(value) and inputs is not None and value in inputs:
        return inputs[value]
    raise InputError(name, f"{value!r} is not a stored input image: image inputs are read, checked and stored "
                           "by the producer (farm submit, Farm.submit)")


def _ranged(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    from farm.jobs.values import parse_float

    number = parse_float(name, value)
    if number > hi or number < lo or (lo_open and number == lo):
        bounds = f"{lo:g} < {name} <= {hi:g}" if lo_open else f"{lo:g}..{hi:g}"
        raise InputError(name, f"{number:g} is outside {bounds}")
    return number


def resolve_kind(request, model: ModelEntry, controlnets: Mapping[str, ControlNetEntry],
                 inputs: Mapping[str, InputInfo] | None, kinds: tuple[str, ...]) -> KindFields:
    """Check what a request's kind takes and needs; the spec fields it sets and its default size."""
    from farm.jobs.values import parse_int
    from farm.models.names import check_name

    kind = infer_kind(request)
    if kind not in kinds:
        raise InputError("kind", f"{kind!r} is not a job kind (known: {', '.join(kinds)})")
    given = [name for name in FLAGS if getattr(request, name) is not None]
    if "mask_image" in given and "init_image" not in given:
        raise InputError("mask_image", "--mask needs --init-image, the image it masks")
    for name in given:
        if name not in TAKES[kind]:
            raise InputError(name, f"{_a(kind)} job takes no {FLAGS[name]}" + (
                "" if kind == "txt2img" else f" ({kind} takes {', '.join(FLAGS[n] for n in TAKES[kind])})"))
    if kind in ("txt2img", "clip"):
        return KindFields(kind)
    if model.family not in KIND_FAMILIES:
        raise InputError("kind", f"{kind} jobs run on the {', '.join(KIND_FAMILIES)} families; {model.name} is a "
                                 f"{model.family} model")
    for name in NEEDS[kind]:
        if getattr(request, name) is None:
            raise InputError(name, f"{_a(kind)} job needs {FLAGS[name]}")
    out: dict = {}
    for name in INPUT_FIELDS:
        if getattr(request, name) is not None:
            out[name] = _input(name, getattr(request, name), inputs).sha256
    source = _input("control_image" if kind == "controlnet" else "init_image",
                    out["control_image" if kind == "controlnet" else "init_image"], inputs)
    if kind == "inpaint":
        mask = _input("mask_image", out["mask_image"], inputs)
        if (mask.width, mask.height) != (source.width, source.height):
            raise InputError("mask_image", f"{mask.width}x{mask.height} differs from the init image's "
                                           f"{source.width}x{source.height}; a mask covers its image pixel for pixel")
        out["mask_blur"] = 0 if request.mask_blur is None else parse_int("mask_blur", request.mask_blur, 0, MAX_MASK_BLUR)
    if kind in DEFAULT_STRENGTH:
        out["strength"] = DEFAULT_STRENGTH[kind] if request.strength is None else \
            _ranged("strength", request.strength, 0.0, 1.0, lo_open=True)
    size = (max(8, source.width // 8 * 8), max(8, source.height // 8 * 8))
    if kind == "upscale":
        factor = DEFAULT_UPSCALE if request.upscale is None else \
            _ranged("upscale", request.upscale, 1.0, MAX_UPSCALE, lo_open=True)
        out["upscale"] = factor
        if request.width is not None or request.height is not None:
            raise InputError("size", f"an upscale job's size is its init image's times --scale "
                                     f"({source.width}x{source.height} x {factor:g}); give no --size")
        size = (max(8, round(source.width * factor / 8) * 8), max(8, round(source.height * factor / 8) * 8))
    if kind == "controlnet":
        name = check_name("controlnet", request.controlnet)
        entry = controlnets.get(name)
        if entry is None:
            raise InputError("controlnet", f"unknown ControlNet {name!r} (known: {', '.join(sorted(controlnets))}; "
                                           "see `farm controlnets add`)")
        if entry.arch != model.arch:
            raise InputError("controlnet", f"{name} is for {entry.arch} models, not {model.name} ({model.arch})")
        out["controlnet"] = name
        out["control_scale"] = DEFAULT_CONTROL_SCALE if request.control_scale is None else \
            _ranged("control_scale", request.control_scale, 0.0, MAX_CONTROL_SCALE)
        if request.control_preprocess is not None:
            if request.control_preprocess not in PREPROCESSORS:
                raise InputError("control_preprocess", f"{request.control_preprocess!r} is not a preprocessor "
                                                       f"(known: {', '.join(PREPROCESSORS)})")
            out["control_preprocess"] = request.control_preprocess
    return KindFields(kind, out, size)
