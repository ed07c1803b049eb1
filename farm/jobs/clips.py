"""Clip jobs (issue 27): what a ``clip`` takes, checked and completed. Pure.

A clip is ``frames`` images that AnimateDiff renders together: diffusers' ``AnimateDiffPipeline``
is the SD1.5 pipeline with a motion module's temporal layers in its UNet, so the frames of one
clip attend to each other at every denoising step. One seed per clip (its generator draws the
noise of every frame); the clip is one artifact, an animated WebP (or an MP4 when asked).

The few-step recipes that exist for it:

- ``lcm-lora`` (LCM-LoRA, or AnimateLCM's own LoRA named with ``--accelerator``) with
  LCMScheduler: 4-8 steps, guidance 1-2 (AnimateLCM's card: 4-8 steps at guidance 1-2);
- ``animatediff-lightning``: ByteDance's distilled motion module, Euler with trailing timesteps,
  at the step count of its file (1, 2, 4 or 8); no LoRA.

A motion module carries the noise schedule it was trained with (AnimateDiff's is ``linear``,
where SD1.5's is ``scaled_linear``); the clip's scheduler takes it.
"""

from __future__ import annotations

from typing import Mapping

from farm.errors import InputError
from farm.models.catalog import ModelEntry, MotionAdapterEntry

CLIP_FAMILIES = ("sd15",)  # AnimateDiffPipeline's; SDXL's motion module is a beta, FLUX and SD3 have none
MIN_FRAMES, MAX_FRAMES = 8, 32  # AnimateDiff's motion modules are trained on 16 frames, positions up to 32
DEFAULT_FRAMES = 16
MIN_FPS, MAX_FPS = 1, 60
DEFAULT_FPS = 8  # AnimateDiff's clips: 16 frames at 8 fps, two seconds
FORMATS = ("webp", "mp4")
CONTENT_TYPES = {"webp": "image/webp", "mp4": "video/mp4"}
CLIP_RECIPES = ("lcm-lora", "animatediff-lightning")
CLIP_ONLY_RECIPES = ("animatediff-lightning",)
LCM_CLIP_STEPS = (4, 8)  # the LCM recipes' range for clips (below 4, motion falls apart)
LCM_CLIP_GUIDANCE = (1.0, 2.0)
FLAGS = {"frames": "--frames", "fps": "--fps", "motion": "--motion", "video_format": "--video-format"}


def clip_flags_given(request) -> list[str]:
    return [name for name in FLAGS if getattr(request, name, None) is not None]


def _motion(request, model: ModelEntry, motions: Mapping[str, MotionAdapterEntry], recipe: str) -> MotionAdapterEntry:
    from farm.models.names import check_name

    if request.motion is not None:
        name = check_name("motion", request.motion)
        entry = motions.get(name)
        if entry is None:
            raise InputError("motion", f"unknown motion module {name!r} (known: {', '.join(sorted(motions))}; see "
                                       "`farm motion add`)")
        if entry.arch != model.arch:
            raise InputError("motion", f"{name} is a motion module for {entry.arch} models, not {model.name} "
                                       f"({model.arch})")
        if entry.recipe is not None and entry.recipe != recipe:
            raise InputError("motion", f"{name} is an {entry.recipe} module: it runs with --recipe {entry.recipe}")
        if entry.recipe is None and recipe in CLIP_ONLY_RECIPES:
            raise InputError("motion", f"{name} is not an {recipe} module (the {recipe} recipe runs a module "
                                       "distilled for its step count)")
        return entry
    fitting = sorted((m for m in motions.values() if m.arch == model.arch and m.recipe == (
        recipe if recipe in CLIP_ONLY_RECIPES else None)), key=lambda m: (not m.builtin, m.name))
    steps = request.steps
    if recipe in CLIP_ONLY_RECIPES and steps is not None:
        from farm.jobs.values import parse_int

        wanted = parse_int("steps", steps, 1, 200)
        fitting = [m for m in fitting if m.steps == wanted] or fitting
    if not fitting:
        raise InputError("motion", f"no {'' if recipe not in CLIP_ONLY_RECIPES else recipe + ' '}motion module is "
                                   f"registered for {model.arch} models (model {model.name}); see `farm motion add`")
    return fitting[0]


def resolve_clip(request, model: ModelEntry, motions: Mapping[str, MotionAdapterEntry],
                 recipe: str) -> tuple[dict, int | None]:
    """Check a clip request: the spec's ``clip`` settings and the steps its motion module implies
    (a Lightning module's step count, when the request gives none)."""
    from farm.jobs.values import parse_int

    if model.family not in CLIP_FAMILIES:
        raise InputError("kind", f"clip jobs run on the {', '.join(CLIP_FAMILIES)} family (AnimateDiff); {model.name} "
                                 f"is a {model.family} model")
    if recipe not in CLIP_RECIPES:
        raise InputError("recipe", f"clips render with {' or '.join(CLIP_RECIPES)}, not {recipe}")
    frames = DEFAULT_FRAMES if request.frames is None else parse_int("frames", request.frames, MIN_FRAMES, MAX_FRAMES)
    fps = DEFAULT_FPS if request.fps is None else parse_int("fps", request.fps, MIN_FPS, MAX_FPS)
    video_format = "webp" if request.video_format is None else request.video_format
    if video_format not in FORMATS:
        raise InputError("video_format", f"{video_format!r} is not a clip format (known: {', '.join(FORMATS)})")
    motion = _motion(request, model, motions, recipe)
    steps = None
    if recipe in CLIP_ONLY_RECIPES:
        steps = motion.steps if request.steps is None else parse_int("steps", request.steps, 1, 200)
        if steps != motion.steps:
            raise InputError("steps", f"{motion.name} is distilled for {motion.steps} steps, not {steps} (AnimateDiff-"
                                      f"Lightning runs at its file's step count)")
    elif request.steps is not None:
        steps = parse_int("steps", request.steps, 1, 200)
        lo, hi = LCM_CLIP_STEPS
        if not lo <= steps <= hi:
            raise InputError("steps", f"{steps} is outside {lo}..{hi} for a {recipe} clip")
    settings = {"frames": frames, "fps": fps, "motion": motion.name, "format": video_format}
    return settings, steps


def check_clip_guidance(recipe: str, guidance: float) -> None:
    """The LCM recipes' guidance range for clips (AnimateLCM: about 1-2)."""
    lo, hi = LCM_CLIP_GUIDANCE
    if recipe not in CLIP_ONLY_RECIPES and not lo <= guidance <= hi:
        raise InputError("guidance", f"{guidance:g} is outside {lo:g}..{hi:g} for a {recipe} clip")


def clip_scheduler_config(motion: MotionAdapterEntry | None, config: dict) -> dict:
    """The recipe's scheduler settings with the motion module's noise schedule."""
    if motion is None or motion.beta_schedule is None:
        return dict(config)
    return {**config, "beta_schedule": motion.beta_schedule}


def refuse_clip_flags(request, kind: str) -> None:
    """A clip's options on another kind of job are a mistake, not something to ignore."""
    given = clip_flags_given(request)
    if given and kind != "clip":
        raise InputError(given[0], f"{FLAGS[given[0]]} is a clip option; {kind} jobs take none (add --kind clip)")


def artifact_extension(clip: dict | None) -> str:
    """The stored file's extension: png for an image, the clip's format for a clip."""
    return "png" if not clip else clip["format"]


def content_type(clip: dict | None) -> str:
    return "image/png" if not clip else CONTENT_TYPES[clip["format"]]
