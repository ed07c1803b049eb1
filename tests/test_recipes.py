"""Recipes as data: ranges, defaults, families."""

import pytest

from farm.errors import InputError
from farm.recipes import RECIPES, resolve_recipe


def test_the_seven_recipes():
    assert set(RECIPES) == {"lcm-lora", "lcm", "turbo", "lightning", "hyper", "lcm-blend", "plain"}
    for recipe in RECIPES.values():
        lo, hi = recipe.steps
        assert lo <= recipe.default_steps <= hi, recipe.name
        assert recipe.guidance[0] <= recipe.default_guidance <= recipe.guidance[1], recipe.name
        if recipe.step_choices:
            assert recipe.default_steps in recipe.step_choices


def test_lcm_lora_defaults_match_the_seeds():
    r = resolve_recipe("lcm-lora", "sdxl", None, None, "")
    assert (r.scheduler, r.steps, r.guidance, r.accelerator, r.accelerator_weight) == (
        "LCMScheduler", 4, 1.0, "lcm-lora", 1.0)


def test_guidance_above_two_does_not_work_with_lcm_lora():
    with pytest.raises(InputError, match="guidance: 7 is outside 0..2 for the lcm-lora recipe"):
        resolve_recipe("lcm-lora", "sd15", 4, 7, "")


def test_trailing_spacing_for_lightning():
    r = resolve_recipe("lightning", "sdxl", 8, None, "")
    assert r.scheduler_config == {"timestep_spacing": "trailing"} and r.guidance == 0.0
