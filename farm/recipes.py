"""Few-step recipes: scheduler + steps + guidance + accelerator, as pure data and validation.

The facts come from the seed documents (see DESIGN.md section 5). A recipe fills the defaults a
user leaves out and refuses, with a one-line reason, the combinations that cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from farm.errors import InputError


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    scheduler: str | None  # diffusers scheduler class; None keeps the model's own
    scheduler_config: dict = field(default_factory=dict)
    steps: tuple[int, int] = (1, 8)  # inclusive range
    step_choices: tuple[int, ...] | None = None  # when the accelerator exists only for these counts
    default_steps: int = 4
    guidance: tuple[float, float] = (0.0, 2.0)  # inclusive range
    default_guidance: float = 1.0
    accelerator: str | None = None  # the accelerator role the model must provide
    accelerator_weight: float | None = None
    families: tuple[str, ...] = ("sd15", "sdxl", "ssd-1b")

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "summary": self.summary,
            "scheduler": self.scheduler or "model default",
            "scheduler_config": dict(self.scheduler_config),
            "steps": {"min": self.steps[0], "max": self.steps[1], "default": self.default_steps,
                      "choices": list(self.step_choices) if self.step_choices else None},
            "guidance": {"min": self.guidance[0], "max": self.guidance[1],
                         "default": self.default_guidance},
            "accelerator": self.accelerator,
            "accelerator_weight": self.accelerator_weight,
            "families": list(self.families),
        }


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "lcm-lora", "LCM-LoRA on any model of its family; 4-6 steps is the sweet spot",
            "LCMScheduler", {}, (1, 8), None, 4, (0.0, 2.0), 1.0, "lcm-lora", 1.0,
        ),
        Recipe(
            "lcm", "an LCM-distilled checkpoint (guidance is embedded in the model)",
            "LCMScheduler", {}, (1, 8), None, 4, (1.0, 15.0), 8.0, None, None, ("sd15", "sdxl"),
        ),
        Recipe(
            "turbo", "SDXL-Turbo: 1-4 steps, no CFG",
            "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"},
            (1, 6), None, 1, (0.0, 2.5), 0.0, None, None, ("sdxl",),
        ),
        Recipe(
            "lightning", "SDXL-Lightning LoRA: the LoRA is chosen by the step count",
            "EulerDiscreteScheduler", {"timestep_spacing": "trailing"},
            (1, 8), (1, 2, 4, 8), 4, (0.0, 2.0), 0.0, "lightning", 1.0, ("sdxl",),
        ),
        Recipe(
            "hyper", "Hyper-SD LoRA for N steps (TCD at 1 step, trailing spacing otherwise)",
            "DDIMScheduler", {"timestep_spacing": "trailing"},
            (1, 14), (1, 2, 4, 8, 12), 8, (0.0, 2.0), 1.0, "hyper", 1.0, ("sd15", "sdxl"),
        ),
        Recipe(
            "lcm-blend", "LCM-LoRA at ~0.3 with DPM++ Karras: keeps the base look, ~30% faster",
            "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True},
            (6, 8), None, 8, (2.0, 3.5), 2.5, "lcm-lora", 0.3,
        ),
        Recipe(
            "plain", "no accelerator: the baseline the few-step recipes are compared against",
            None, {}, (10, 60), None, 25, (1.0, 12.0), 7.0, None, None,
        ),
    )
}

DEFAULT_RECIPE = "lcm-lora"


@dataclass(frozen=True)
class ResolvedRecipe:
    name: str
    scheduler: str | None
    scheduler_config: dict
    steps: int
    guidance: float
    accelerator: str | None
    accelerator_weight: float | None
    warnings: tuple[str, ...] = ()


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise InputError("recipe", f"unknown recipe {name!r} (known: {', '.join(RECIPES)})") from None


def resolve_recipe(
    name: str, family: str, steps: int | None, guidance: float | None, negative_prompt: str,
) -> ResolvedRecipe:
    """Fill the recipe's defaults and refuse what cannot work, with a one-line reason."""
    recipe = get_recipe(name)
    if family not in recipe.families:
        raise InputError(
            "recipe", f"{name} does not support the {family} family (supports {', '.join(recipe.families)})"
        )
    steps = recipe.default_steps if steps is None else steps
    lo, hi = recipe.steps
    if not lo <= steps <= hi:
        raise InputError("steps", f"{steps} is outside {lo}..{hi} for the {name} recipe")
    if recipe.step_choices and steps not in recipe.step_choices:
        choices = ", ".join(map(str, recipe.step_choices))
        raise InputError("steps", f"{name} has accelerators for {choices} steps only, not {steps}")
    guidance = recipe.default_guidance if guidance is None else float(guidance)
    glo, ghi = recipe.guidance
    if not glo <= guidance <= ghi:
        raise InputError("guidance", f"{guidance:g} is outside {glo:g}..{ghi:g} for the {name} recipe")
    warnings = []
    # diffusers runs classifier-free guidance only when guidance > 1 (LCM full models embed it)
    if negative_prompt and guidance <= 1.0 and name != "lcm":
        warnings.append(
            f"negative prompt ignored: guidance {guidance:g} <= 1 turns classifier-free guidance off"
        )
    return ResolvedRecipe(
        name=name, scheduler=recipe.scheduler, scheduler_config=dict(recipe.scheduler_config),
        steps=steps, guidance=guidance, accelerator=recipe.accelerator,
        accelerator_weight=recipe.accelerator_weight, warnings=tuple(warnings),
    )
