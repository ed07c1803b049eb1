"""Few-step recipes: scheduler + steps + guidance + accelerator, as pure data and validation.

The facts come from the seed documents (DESIGN.md section 5). A recipe fills the defaults a user
leaves out, picks the accelerator LoRA that fits the model (by architecture and, for Lightning and
Hyper-SD, by step count) and refuses, with a one-line reason, what cannot work: 8 steps with only
a 4-step Lightning LoRA, guidance 7 with LCM-LoRA, Lightning on SD1.5.

The flow-matching families (DESIGN.md 5b) have their own: ``schnell`` (FLUX.1-schnell, 1-4 steps,
no guidance at all), ``sd35-turbo`` (SD3.5 Large Turbo, 4 steps without CFG) and ``flux-hyper``
(FLUX.1-dev with Hyper-SD's 8-step FLUX LoRA at 0.125). FLUX runs no classifier-free guidance:
its guidance is distilled into the model (FLUX.1-dev feeds it to a guidance embedding; schnell
has none), so a negative prompt never changes a FLUX image. ``pipeline_options`` are settings of
the pipeline call itself (T5's ``max_sequence_length``), read by the family's engine module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from farm.errors import InputError
from farm.models.catalog import AdapterEntry, ModelEntry


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    scheduler: str | None  # diffusers scheduler class; None keeps the model's own
    scheduler_config: dict = field(default_factory=dict)
    steps: tuple[int, int] = (1, 8)  # inclusive range
    default_steps: int = 4
    guidance: tuple[float, float] = (0.0, 2.0)  # inclusive range
    default_guidance: float = 1.0
    accelerator: str | None = None  # the accelerator LoRA role this recipe loads
    accelerator_weight: float | None = None
    families: tuple[str, ...] = ("sd15", "sdxl", "ssd-1b")
    model_kinds: tuple[str, ...] = ("base",)
    step_choices: tuple[int, ...] | None = None  # accelerators distilled for these step counts only
    extra_steps: int = 0  # a step-distilled LoRA also works for up to this many more steps
    schedulers_by_steps: dict = field(default_factory=dict)  # steps -> (class, config)
    # guidance goes to the model (FLUX's distilled guidance), never to classifier-free guidance
    distilled_guidance: bool = False
    pipeline_options: dict = field(default_factory=dict)  # e.g. T5's max_sequence_length

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "summary": self.summary,
            "scheduler": self.scheduler or "model default",
            "scheduler_config": dict(self.scheduler_config),
            "schedulers_by_steps": {str(k): {"scheduler": c, "config": cfg}
                                    for k, (c, cfg) in self.schedulers_by_steps.items()},
            "steps": {"min": self.steps[0], "max": self.steps[1], "default": self.default_steps,
                      "choices": list(self.step_choices) if self.step_choices else None},
            "guidance": {"min": self.guidance[0], "max": self.guidance[1], "default": self.default_guidance},
            "accelerator": self.accelerator,
            "accelerator_weight": self.accelerator_weight,
            "families": list(self.families),
            "model_kinds": list(self.model_kinds),
            "distilled_guidance": self.distilled_guidance,  # guidance goes to the model, never to CFG
            "pipeline_options": dict(self.pipeline_options),
        }


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("lcm-lora", "LCM-LoRA on any model of its family; 1 step is rough shapes, 4-6 the sweet spot, "
                           "8 can over-saturate", "LCMScheduler", {}, (1, 8), 4, (0.0, 2.0), 1.0,
               "lcm-lora", 1.0),
        Recipe("lcm", "an LCM-distilled checkpoint; guidance is embedded in the model (w ~ 8)",
               "LCMScheduler", {}, (1, 8), 4, (1.0, 15.0), 8.0, None, None, ("sd15", "sdxl"), ("lcm",)),
        Recipe("turbo", "SDXL-Turbo: the model at 1-4 steps without CFG, or a Turbo LoRA at ~0.6 for 4-6 steps",
               "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, (1, 6), 1, (0.0, 2.5), 0.0,
               "turbo", 0.6, ("sdxl",), ("turbo", "base")),
        Recipe("lightning", "SDXL-Lightning LoRA: the LoRA is chosen by the step count; trailing timesteps",
               "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, (1, 8), 4, (0.0, 2.0), 0.0,
               "lightning", 1.0, ("sdxl",), ("base",), (1, 2, 4, 8)),
        Recipe("hyper", "Hyper-SD LoRA for N steps (N+1, N+2 also work); TCD at 1 step, trailing DDIM otherwise",
               "DDIMScheduler", {"timestep_spacing": "trailing"}, (1, 14), 8, (0.0, 2.0), 1.0,
               "hyper", 1.0, ("sd15", "sdxl"), ("base",), (1, 2, 4, 8, 12), 2,
               {1: ("TCDScheduler", {})}),
        Recipe("lcm-blend", "LCM-LoRA at ~0.3 with DPM++ 2S Karras: keeps the base look, ~30% faster",
               "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}, (6, 8), 8, (2.0, 3.5), 2.5,
               "lcm-lora", 0.3),
        Recipe("plain", "no accelerator: the baseline the few-step recipes are compared against",
               None, {}, (10, 60), 25, (1.0, 12.0), 7.0),
        # -- flow-matching families: FlowMatchEulerDiscreteScheduler with the model's own config
        # (shift, dynamic shifting); T5 prompts padded to max_sequence_length tokens
        Recipe("schnell", "FLUX.1-schnell: 1-4 steps, no guidance (no CFG, no guidance embedding); T5 prompts up "
                          "to 256 tokens", "FlowMatchEulerDiscreteScheduler", {}, (1, 4), 4, (0.0, 0.0), 0.0,
               families=("flux",), model_kinds=("turbo",), distilled_guidance=True,
               pipeline_options={"max_sequence_length": 256}),
        Recipe("sd35-turbo", "SD3.5 Large Turbo: 4 steps without CFG (guidance 0); T5 prompts up to 256 tokens",
               "FlowMatchEulerDiscreteScheduler", {}, (1, 8), 4, (0.0, 0.0), 0.0,
               families=("sd3",), model_kinds=("turbo",), pipeline_options={"max_sequence_length": 256}),
        Recipe("flux-hyper", "FLUX.1-dev + Hyper-SD's FLUX LoRA for N steps (8; N+1, N+2 also work) at 0.125; "
                             "guidance is FLUX's distilled guidance (~3.5), not CFG",
               "FlowMatchEulerDiscreteScheduler", {}, (8, 18), 8, (1.0, 5.0), 3.5, "flux-hyper", 0.125,
               ("flux",), ("base",), (8, 16), 2, distilled_guidance=True,
               pipeline_options={"max_sequence_length": 512}),
        # issue 27, clips only (farm.jobs.clips): ByteDance's distilled motion module for N steps, no LoRA
        Recipe("animatediff-lightning", "AnimateDiff-Lightning (clips): the motion module is chosen by the step count; "
                                        "Euler with trailing timesteps", "EulerDiscreteScheduler",
               {"timestep_spacing": "trailing"}, (1, 8), 4, (0.0, 2.0), 1.0, None, None, ("sd15",), ("base",),
               (1, 2, 4, 8)),
    )
}

DEFAULT_RECIPE = "lcm-lora"


def default_recipe(model: ModelEntry) -> str:
    """The recipe of a job that names none: lcm-lora for the UNet families (whatever the model's
    kind, as before), else the first recipe made for the model's family and kind (schnell for
    FLUX.1-schnell, flux-hyper for FLUX.1-dev, sd35-turbo for SD3.5 Large Turbo)."""
    if model.family in RECIPES[DEFAULT_RECIPE].families:
        return DEFAULT_RECIPE
    return next((r.name for r in RECIPES.values() if model.family in r.families and model.kind in r.model_kinds),
                DEFAULT_RECIPE)

# A Turbo *model* needs no LoRA, fewer steps and no CFG; the rules for the Turbo LoRA are the recipe's.
KIND_OVERRIDES = {
    ("turbo", "turbo"): {"steps": (1, 4), "default_steps": 1, "guidance": (0.0, 1.0), "default_guidance": 0.0,
                         "accelerator": None, "accelerator_weight": None},
    ("turbo", "base"): {"steps": (4, 6), "default_steps": 4, "guidance": (1.0, 2.5), "default_guidance": 1.0},
}


@dataclass(frozen=True)
class ResolvedRecipe:
    name: str
    scheduler: str | None
    scheduler_config: dict
    steps: int
    guidance: float
    accelerator: str | None  # the adapter name
    accelerator_weight: float | None
    warnings: tuple[str, ...] = ()


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise InputError("recipe", f"unknown recipe {name!r} (known: {', '.join(RECIPES)})") from None


def _accelerators(adapters: Mapping[str, AdapterEntry], arch: str, role: str) -> list[AdapterEntry]:
    # a built-in stays the default among equals: a registered one (e.g. distilled with `farm distill`)
    # is picked by name (--accelerator) or by binding it to its model, never by its name's spelling
    return sorted((a for a in adapters.values() if a.kind == "accelerator" and a.arch == arch and a.recipe == role),
                  key=lambda a: (a.steps or 0, not a.builtin, a.name))


def _named_accelerator(recipe: Recipe, model: ModelEntry, name: str, adapters) -> AdapterEntry:
    """An accelerator a job names (``--accelerator``) or its model is bound to (issue 14)."""
    entry = adapters.get(name)
    if entry is None:
        raise InputError("accelerator", f"unknown adapter {name!r}")
    if entry.kind != "accelerator" or entry.recipe != recipe.accelerator:
        raise InputError("accelerator", f"{name} is not a {recipe.accelerator} accelerator "
                                        f"(it is a {entry.kind} adapter{' for ' + entry.recipe if entry.recipe else ''})")
    if entry.arch != model.arch:
        raise InputError("accelerator", f"{name} is for {entry.arch} models, not {model.name} ({model.arch})")
    return entry


def _pick_accelerator(recipe: Recipe, model: ModelEntry, steps: int, adapters, named: str | None = None) -> AdapterEntry:
    if named is None and model.bound(recipe.name) in adapters:
        named = model.bound(recipe.name)  # the model's own accelerator, e.g. an LCM-LoRA distilled from it
    if named is not None:
        return _named_accelerator(recipe, model, named, adapters)
    candidates = _accelerators(adapters, model.arch, recipe.accelerator)
    if not candidates:
        raise InputError("recipe", f"no {recipe.accelerator} accelerator is registered for {model.arch} models "
                                   f"(model {model.name}); see `farm adapters add --kind accelerator`")
    if not recipe.step_choices:
        return candidates[0]
    fitting = [a for a in candidates if a.steps is not None and a.steps <= steps <= a.steps + recipe.extra_steps]
    if not fitting:
        have = ", ".join(str(a.steps) for a in candidates if a.steps is not None) or "none"
        raise InputError("steps", f"{steps} steps needs a {steps}-step {recipe.name} LoRA for {model.arch} "
                                  f"models (registered: {have})")
    closest = max(a.steps or 0 for a in fitting)  # the closest step count below, a built-in first
    return next(a for a in fitting if a.steps == closest)


def resolve_recipe(name: str, model: ModelEntry, steps: int | None, guidance: float | None,
                   negative_prompt: str, adapters: Mapping[str, AdapterEntry],
                   accelerator_name: str | None = None) -> ResolvedRecipe:
    """Fill the recipe's defaults, pick its accelerator (``accelerator_name``: the one the job
    names), and refuse what cannot work."""
    recipe = get_recipe(name)
    if model.family not in recipe.families:
        raise InputError("recipe", f"{name} does not support the {model.family} family "
                                   f"(supports {', '.join(recipe.families)})")
    if model.kind not in recipe.model_kinds:
        wanted = " or ".join(recipe.model_kinds)
        raise InputError("recipe", f"{name} needs a {wanted} model; {model.name} is a {model.kind} model")
    recipe = replace(recipe, **KIND_OVERRIDES.get((name, model.kind), {}))

    steps = recipe.default_steps if steps is None else steps
    lo, hi = recipe.steps
    if not lo <= steps <= hi:
        raise InputError("steps", f"{steps} is outside {lo}..{hi} for the {name} recipe")
    if accelerator_name is not None and not recipe.accelerator:
        raise InputError("accelerator", f"the {name} recipe loads no accelerator")
    accelerator = _pick_accelerator(recipe, model, steps, adapters, accelerator_name) if recipe.accelerator else None

    guidance = recipe.default_guidance if guidance is None else float(guidance)
    glo, ghi = recipe.guidance
    if accelerator is not None and accelerator.guidance_max:
        ghi = max(ghi, accelerator.guidance_max)
    if glo == ghi != guidance:  # schnell, sd35-turbo: the model was distilled to run without guidance
        raise InputError("guidance", f"{guidance:g} is not {glo:g}: the {name} recipe runs without guidance "
                                     f"({model.name} is distilled for guidance {glo:g})")
    if not glo <= guidance <= ghi:
        raise InputError("guidance", f"{guidance:g} is outside {glo:g}..{ghi:g} for the {name} recipe")

    scheduler, scheduler_config = recipe.schedulers_by_steps.get(steps, (recipe.scheduler, recipe.scheduler_config))
    if accelerator is not None and accelerator.original_steps and scheduler == "LCMScheduler":
        # the solver's step count the LoRA was distilled with (1000 / k), issue 14
        scheduler_config = {**scheduler_config, "original_inference_steps": accelerator.original_steps}
    warnings = []
    # diffusers runs classifier-free guidance only when guidance > 1; LCM models embed it instead,
    # FLUX models distil it (its recipes pass guidance to the model, never to CFG)
    if negative_prompt and recipe.distilled_guidance:
        warnings.append(f"negative prompt ignored: {model.family} models do not run classifier-free guidance")
    elif negative_prompt and (guidance <= 1.0 or model.kind == "lcm"):
        warnings.append(f"negative prompt ignored: guidance {guidance:g} <= 1 turns classifier-free guidance off"
                        if model.kind != "lcm" else "negative prompt ignored: LCM models do not run CFG")
    return ResolvedRecipe(
        name=name, scheduler=scheduler, scheduler_config=dict(scheduler_config), steps=steps, guidance=guidance,
        accelerator=accelerator.name if accelerator else None,
        accelerator_weight=recipe.accelerator_weight if accelerator else None, warnings=tuple(warnings),
    )


def pipeline_option(recipe_name: str, name: str, default):
    """A recipe's pipeline setting (e.g. T5's ``max_sequence_length``), or the family's default
    for a recipe that sets none."""
    recipe = RECIPES.get(recipe_name)
    return (recipe.pipeline_options if recipe is not None else {}).get(name, default)
