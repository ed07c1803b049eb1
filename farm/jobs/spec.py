"""Job specs: validation and resolution, pure (no I/O).

A ``JobRequest`` is what a user asked for (any field may be missing or malformed). ``resolve_job``
turns it into a ``JobSpec``: every field checked, the recipe's defaults filled in, the adapter stack
spelled out, and a digest of everything that shapes the pixels. Any invalid field raises
``InputError`` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Mapping

from farm.errors import InputError
from farm.jobs import clips
from farm.jobs.kinds import IMAGE_KINDS, INPUT_FIELDS, InputInfo, infer_kind, resolve_kind
from farm.jobs.values import parse_float, parse_int
from farm.models.catalog import (
    BUILTIN_ADAPTERS,
    BUILTIN_CONTROLNETS,
    BUILTIN_EMBEDDINGS,
    BUILTIN_MODELS,
    BUILTIN_MOTION_ADAPTERS,
    DECODERS,
    NATIVE_SIZE,
    SIZE_MULTIPLE,
    AdapterEntry,
    ControlNetEntry,
    EmbeddingEntry,
    ModelEntry,
    MotionAdapterEntry,
)
from farm.models.embeddings import used_embeddings
from farm.models.names import check_name
from farm.models.recipes import default_recipe, resolve_recipe

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1  # 32-bit seeds, as other Stable Diffusion tools record them
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_PIXELS = 2048 * 2048
MAX_ADAPTERS = 8
MAX_ADAPTER_WEIGHT = 4.0


@dataclass(frozen=True)
class AdapterUse:
    name: str
    weight: float
    role: str  # "accelerator" (from the recipe) or "style" (asked for)


@dataclass(frozen=True)
class Catalog:
    """The models, adapters and embeddings a submission may name (built-ins, later plus the
    ledger's registry)."""

    models: Mapping[str, ModelEntry] = field(default_factory=lambda: dict(BUILTIN_MODELS))
    adapters: Mapping[str, AdapterEntry] = field(default_factory=lambda: dict(BUILTIN_ADAPTERS))
    embeddings: Mapping[str, EmbeddingEntry] = field(default_factory=lambda: dict(BUILTIN_EMBEDDINGS))
    controlnets: Mapping[str, ControlNetEntry] = field(default_factory=lambda: dict(BUILTIN_CONTROLNETS))
    motion_adapters: Mapping[str, MotionAdapterEntry] = field(default_factory=lambda: dict(BUILTIN_MOTION_ADAPTERS))


@dataclass(frozen=True)
class JobRequest:
    prompt: object = None
    negative_prompt: object = None
    seed: object = None
    steps: object = None
    guidance: object = None
    width: object = None
    height: object = None
    model: object = None
    recipe: object = None
    adapters: object = ()  # sequence of (name, weight) or "name[:weight]" strings
    decoder: object = None  # "full" (the model's VAE, the default) or "tiny" (TAESD, for previews)
    kind: object = None  # KINDS; "txt2img" when not given (or what the image inputs imply, farm.jobs.kinds)
    # issue 13, jobs that start from images (farm.jobs.kinds): an image is a local path, an s3:// URI or
    # job:ID, which the producer reads, checks and stores, and replaces with its sha256
    init_image: object = None
    mask_image: object = None
    control_image: object = None
    strength: object = None
    mask_blur: object = None
    controlnet: object = None
    control_scale: object = None
    control_preprocess: object = None
    upscale: object = None
    # issue 14: the accelerator adapter the recipe loads (default: the model's own, else the arch's)
    accelerator: object = None
    # issue 27, clips (farm.jobs.clips): frames, frames per second, the motion module, webp or mp4
    frames: object = None
    fps: object = None
    motion: object = None
    video_format: object = None


# the request fields of the first release; any later one is left out of a request's digest while
# it is not given, so an idempotency key keeps matching the request it was first used with
FIRST_REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "model",
                        "recipe", "adapters")


KINDS = ("txt2img",) + IMAGE_KINDS + ("clip",)  # farm.jobs.kinds, farm.jobs.clips; training: farm.jobs.training


@dataclass(frozen=True)
class JobSpec:
    """The one job value: the producer makes it, the ledger stores it (farm.ledger.mapping), the
    worker renders it, the PNG records it, replay re-renders it.

    Fields added after the first release have a default and are left out of the digest while they
    hold it, so the digests (and the reuse of stored images) of earlier jobs stay the same.
    """

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    model: str
    model_revision: str | None
    family: str
    recipe: str
    scheduler: str | None
    scheduler_config: dict
    adapters: tuple[AdapterUse, ...]
    warnings: tuple[str, ...] = ()
    decoder: str = "full"
    kind: str = "txt2img"
    # the textual-inversion embeddings the prompt and negative prompt use (by their tokens), found
    # at submission (farm.models.embeddings); names, sorted
    embeddings: tuple[str, ...] = ()
    # issue 13 (farm.jobs.kinds): input images by the sha256 of their stored PNG (inputs/<sha256>.png),
    # and the settings of the kind; None (0) for a txt2img job, so its digest is what it was
    init_image: str | None = None
    mask_image: str | None = None
    control_image: str | None = None
    strength: float | None = None
    mask_blur: int = 0
    controlnet: str | None = None
    control_scale: float | None = None
    control_preprocess: str | None = None
    upscale: float | None = None
    # issue 14, training jobs (farm.jobs.training): what only a training job has; None for a render
    training: dict | None = None
    # issue 27, a clip (farm.jobs.clips): {"frames", "fps", "motion", "format"}; None for an image
    clip: dict | None = None

    def __post_init__(self):
        # a ledger row gives a JSON list (or NULL): the digest compares with the default, ()
        object.__setattr__(self, "embeddings", tuple(self.embeddings or ()))

    @property
    def digest(self) -> str:
        """sha256 of everything that shapes the pixels (not the warnings, not the batch)."""
        shaping = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "warnings" or (f.default is not MISSING and value == f.default):
                continue
            shaping[f.name] = [asdict(a) for a in value] if f.name == "adapters" else value
        blob = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def group_key(self) -> tuple:
        return group_key(self)

    def adapter_dicts(self) -> list[dict]:
        """The adapter stack as JSON (the ledger's column, the PNG's record)."""
        return [{"name": a.name, "weight": a.weight, "role": a.role} for a in self.adapters]


def group_key(spec: JobSpec) -> tuple:
    """Jobs with equal keys can share one pipeline call: every field but prompt, negative prompt
    and seed (each image has its own generator), and the embeddings the prompts use (the worker
    loads those of every job in the call; an embedding changes only the prompts that use it)."""
    per_image = ("prompt", "negative_prompt", "seed", "warnings", "embeddings") + INPUT_FIELDS  # images: issue 13
    return tuple(
        json.dumps(getattr(spec, f.name), sort_keys=True, default=str) if f.name in ("scheduler_config", "training", "clip")
        else tuple((a.name, a.weight) for a in spec.adapters) if f.name == "adapters"
        else getattr(spec, f.name)
        for f in fields(spec) if f.name not in per_image
    )


def _text(field_name: str, value: object, *, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(field_name, f"expected text, got {type(value).__name__}")
    text = " ".join(value.split())  # newlines and tabs inside a prompt are just spaces
    if required and not text:
        raise InputError(field_name, "must not be empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(field_name, f"is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise InputError(field_name, "contains control characters")
    return text


def parse_adapter(value: object) -> tuple[str, float]:
    """'name' (weight 1.0) or 'name:weight', or an already split (name, weight) pair."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        name, weight = value
    elif isinstance(value, Mapping):
        name, weight = value.get("name"), value.get("weight", 1.0)
    elif isinstance(value, str):
        name, _, weight_text = value.partition(":")
        weight = weight_text if weight_text else 1.0
    else:
        raise InputError("adapter", f"expected NAME[:WEIGHT], got {value!r}")
    name = check_name("adapter", name)
    weight = parse_float("adapter", weight)
    if not -MAX_ADAPTER_WEIGHT <= weight <= MAX_ADAPTER_WEIGHT:
        raise InputError("adapter", f"weight {weight:g} of {name} is outside "
                                    f"{-MAX_ADAPTER_WEIGHT:g}..{MAX_ADAPTER_WEIGHT:g}")
    return name, weight


def _side(field_name: str, value: object) -> int:
    side = parse_int(field_name, value, MIN_SIDE, MAX_SIDE)
    if side % 8:
        raise InputError(field_name, f"{side} is not a multiple of 8")
    return side


def resolve_job(request: JobRequest, catalog: Catalog, default_model: str,
                inputs: Mapping[str, InputInfo] | None = None) -> JobSpec:
    """``inputs``: the stored input images the request names by sha256 (the producer's, issue 13)."""
    prompt = _text("prompt", request.prompt, required=True)
    negative = _text("negative_prompt", request.negative_prompt, required=False)
    if request.seed is None:
        raise InputError("seed", "missing (the producer draws and records one when none is given)")
    seed = parse_int("seed", request.seed, 0, MAX_SEED)

    model_name = check_name("model", request.model if request.model is not None else default_model)
    model = catalog.models.get(model_name)
    if model is None:
        raise InputError("model", f"unknown model {model_name!r} (known: {', '.join(sorted(catalog.models))})")

    recipe_name = check_name("recipe", request.recipe if request.recipe is not None else default_recipe(model))
    steps = None if request.steps is None else parse_int("steps", request.steps, 1, 200)
    # issue 27: a clip's frames, fps and motion module (farm.jobs.clips), checked before the recipe
    # (an AnimateDiff-Lightning module says the step count)
    clip = None
    if infer_kind(request) == "clip":
        clip, clip_steps = clips.resolve_clip(request, model, catalog.motion_adapters, recipe_name)
        steps = clip_steps if clip_steps is not None else steps
    else:
        clips.refuse_clip_flags(request, infer_kind(request))
        if recipe_name in clips.CLIP_ONLY_RECIPES:
            raise InputError("recipe", f"the {recipe_name} recipe renders clips (--kind clip)")
    guidance = None if request.guidance is None else parse_float("guidance", request.guidance)
    accelerator = None if request.accelerator is None else check_name("accelerator", request.accelerator)
    recipe = resolve_recipe(recipe_name, model, steps, guidance, negative, catalog.adapters, accelerator)
    scheduler_config = recipe.scheduler_config
    if clip is not None:
        clips.check_clip_guidance(recipe.name, recipe.guidance)
        scheduler_config = clips.clip_scheduler_config(catalog.motion_adapters[clip["motion"]], scheduler_config)

    image = resolve_kind(request, model, catalog.controlnets, inputs, KINDS)  # issue 13: what the kind takes
    image.check_steps(recipe.steps)
    native = model.native_size or NATIVE_SIZE[model.family]
    default_width, default_height = image.size or (native, native)  # an image job's: its input's
    width = _side("width", default_width if request.width is None else request.width)
    height = _side("height", default_height if request.height is None else request.height)
    if width * height > MAX_PIXELS:
        raise InputError("size", f"{width}x{height} exceeds {MAX_PIXELS} pixels")
    multiple = SIZE_MULTIPLE.get(model.family, 8)  # FLUX and SD3: 2x2 patches of 8x latents (farm.models.catalog)
    for side_name, side in (("width", width), ("height", height)):
        if side % multiple:
            raise InputError(side_name, f"{side} is not a multiple of {multiple} ({model.family} models take "
                                        f"sides in steps of {multiple}, e.g. {side - side % multiple})")

    stack: list[AdapterUse] = []
    if recipe.accelerator:
        stack.append(AdapterUse(recipe.accelerator, float(recipe.accelerator_weight or 1.0), "accelerator"))
    raw_adapters = request.adapters or ()
    if isinstance(raw_adapters, (str, Mapping)):
        raw_adapters = [raw_adapters]
    if not isinstance(raw_adapters, (list, tuple)):
        raise InputError("adapter", f"expected a list of NAME[:WEIGHT], got {raw_adapters!r}")
    seen = {a.name for a in stack}
    for raw in raw_adapters:
        name, weight = parse_adapter(raw)
        entry = catalog.adapters.get(name)
        if entry is None:
            raise InputError("adapter", f"unknown adapter {name!r}")
        if entry.arch != model.arch:
            raise InputError("adapter", f"{name} is for {entry.arch} models, not {model_name} ({model.arch})")
        if entry.kind != "style":
            raise InputError("adapter", f"{name} is an accelerator; pick it with --recipe, not --adapter")
        if name in seen:
            raise InputError("adapter", f"{name} is listed twice")
        seen.add(name)
        stack.append(AdapterUse(name, weight, "style"))
    if len(stack) > MAX_ADAPTERS:
        raise InputError("adapter", f"{len(stack)} adapters in one stack; the limit is {MAX_ADAPTERS}")

    decoder = "full" if request.decoder is None else request.decoder
    if decoder not in DECODERS:
        raise InputError("decoder", f"{decoder!r} is not a decoder (known: {', '.join(DECODERS)})")

    embeddings, notes = used_embeddings([prompt, negative], catalog.embeddings, model.arch)

    return JobSpec(
        prompt=prompt, negative_prompt=negative, seed=seed, steps=recipe.steps,
        guidance=recipe.guidance, width=width, height=height, model=model_name,
        model_revision=model.revision, family=model.family, recipe=recipe.name,
        scheduler=recipe.scheduler, scheduler_config=scheduler_config,
        adapters=tuple(stack), warnings=recipe.warnings + notes, decoder=decoder, kind=image.kind,
        embeddings=embeddings, clip=clip, **image.fields,
    )


def direct_spec(*, model: str, seed: int, prompt: str = "a lighthouse at dusk", negative_prompt: str = "",
                steps: int = 4, guidance: float = 1.0, width: int = 64, height: int = 64, family: str = "sd15",
                recipe: str = "lcm-lora", scheduler: str | None = "LCMScheduler",
                scheduler_config: dict | None = None, adapters=(), decoder: str = "full") -> JobSpec:
    """A spec built field by field, without a catalog or a recipe's checks: for the render
    engine's tests and benchmarks, which render models no catalog holds (random real-size
    architectures) or pin every setting. ``adapters``: (name, weight[, role]) tuples or dicts."""
    uses = []
    for a in adapters:
        if isinstance(a, Mapping):
            uses.append(AdapterUse(a["name"], float(a["weight"]), a.get("role", "style")))
        else:
            uses.append(AdapterUse(a[0], float(a[1]), a[2] if len(a) > 2 else "style"))
    return JobSpec(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
                   width=width, height=height, model=model, model_revision=None, family=family, recipe=recipe,
                   scheduler=scheduler, scheduler_config=scheduler_config or {}, adapters=tuple(uses),
                   decoder=decoder)
