"""Recipes as data and validation: ranges, schedulers, accelerators chosen by arch and steps."""

import pytest

from farm.errors import InputError
from farm.models.catalog import BUILTIN_ADAPTERS, BUILTIN_MODELS, AdapterEntry
from farm.models.recipes import RECIPES, resolve_recipe


def resolve(recipe, model, steps=None, guidance=None, negative="", adapters=BUILTIN_ADAPTERS):
    return resolve_recipe(recipe, BUILTIN_MODELS[model], steps, guidance, negative, adapters)


def test_the_seven_recipes_are_consistent():
    assert list(RECIPES) == ["lcm-lora", "lcm", "turbo", "lightning", "hyper", "lcm-blend", "plain",
                             "schnell", "sd35-turbo", "flux-hyper",  # the flow families' (tests/test_flow_recipes.py)
                             "animatediff-lightning"]  # clips only (tests/test_clips.py)
    for recipe in RECIPES.values():
        lo, hi = recipe.steps
        assert lo <= recipe.default_steps <= hi, recipe.name
        assert recipe.guidance[0] <= recipe.default_guidance <= recipe.guidance[1], recipe.name
        if recipe.step_choices:
            assert recipe.default_steps in recipe.step_choices


@pytest.mark.parametrize("model, accelerator", [("tiny-sd", "tiny-sd-lcm-lora"), ("sdxl", "lcm-lora-sdxl"),
                                                ("ssd-1b", "lcm-lora-ssd-1b"), ("sd15", "lcm-lora-sdv1-5")])
def test_lcm_lora_defaults_match_the_seeds(model, accelerator):
    r = resolve("lcm-lora", model)
    assert (r.scheduler, r.steps, r.guidance, r.accelerator, r.accelerator_weight) == (
        "LCMScheduler", 4, 1.0, accelerator, 1.0)


@pytest.mark.parametrize("recipe, model, kwargs, field, words", [
    ("lcm-lora", "tiny-sd", {"guidance": 7}, "guidance", "7 is outside 0..2 for the lcm-lora recipe"),
    ("lcm-lora", "tiny-sd", {"steps": 9}, "steps", "9 is outside 1..8"),
    ("lightning", "tiny-sd", {}, "recipe", "lightning does not support the sd15 family"),
    ("lightning", "tiny-sdxl", {"steps": 3}, "steps", "3 steps needs a 3-step lightning LoRA"),
    ("lightning", "sdxl", {"steps": 1}, "steps", "registered: 2, 4, 8"),
    ("hyper", "tiny-sd", {"steps": 7}, "steps", "7 steps needs a 7-step hyper LoRA"),
    ("hyper", "tiny-sd", {"steps": 8, "guidance": 6}, "guidance", "6 is outside 0..2"),
    ("lcm", "tiny-sd", {}, "recipe", "lcm needs a lcm model; tiny-sd is a base model"),
    ("lcm-lora", "tiny-sdxl-turbo", {}, "recipe", "needs a base model"),
    ("turbo", "tiny-sdxl-turbo", {"steps": 6}, "steps", "6 is outside 1..4"),
    ("turbo", "tiny-sdxl", {"steps": 2}, "steps", "2 is outside 4..6"),
    ("turbo", "tiny-ssd-1b", {}, "recipe", "does not support the ssd-1b family"),
    ("lcm-blend", "tiny-sd", {"steps": 4}, "steps", "4 is outside 6..8"),
    ("plain", "tiny-sd", {"guidance": 20}, "guidance", "outside 1..12"),
    ("lcm-lora", "tiny-ssd-1b", {"adapters": {}}, "recipe", "no lcm-lora accelerator is registered for tiny-ssd-1b"),
])
def test_what_cannot_work_is_refused_with_a_reason(recipe, model, kwargs, field, words):
    with pytest.raises(InputError) as info:
        resolve(recipe, model, **kwargs)
    assert info.value.field == field and words in str(info.value)


def test_eight_steps_with_only_a_four_step_lightning_lora():
    only_four = {"l4": AdapterEntry("l4", "x/y", "sdxl", "accelerator", recipe="lightning", steps=4)}
    assert resolve("lightning", "sdxl", steps=4, adapters=only_four).accelerator == "l4"
    with pytest.raises(InputError, match="8 steps needs a 8-step lightning LoRA for sdxl models .registered: 4."):
        resolve("lightning", "sdxl", steps=8, adapters=only_four)


@pytest.mark.parametrize("steps, lora", [(1, "tiny-sdxl-lightning-1step"), (2, "tiny-sdxl-lightning-2step"),
                                         (4, "tiny-sdxl-lightning-4step"), (8, "tiny-sdxl-lightning-8step")])
def test_lightning_picks_the_lora_for_its_step_count(steps, lora):
    r = resolve("lightning", "tiny-sdxl", steps=steps)
    assert (r.accelerator, r.scheduler, r.scheduler_config, r.guidance) == (
        lora, "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, 0.0)


def test_hyper_allows_a_step_or_two_more_and_uses_tcd_for_one_step():
    assert resolve("hyper", "tiny-sd", steps=5).accelerator == "tiny-sd-hyper-4step"
    assert resolve("hyper", "tiny-sd", steps=6).accelerator == "tiny-sd-hyper-4step"
    one = resolve("hyper", "tiny-sd", steps=1)
    assert (one.scheduler, one.accelerator) == ("TCDScheduler", "tiny-sd-hyper-1step")
    cfg = resolve("hyper", "tiny-sdxl", steps=12, guidance=6)  # the CFG-preserved LoRA allows more
    assert (cfg.accelerator, cfg.guidance, cfg.scheduler) == ("tiny-sdxl-hyper-12step-cfg", 6.0, "DDIMScheduler")


def test_turbo_model_needs_no_lora_and_the_turbo_lora_runs_at_06():
    model = resolve("turbo", "tiny-sdxl-turbo")
    assert (model.accelerator, model.steps, model.guidance) == (None, 1, 0.0)
    lora = resolve("turbo", "tiny-sdxl")
    assert (lora.accelerator, lora.accelerator_weight, lora.steps) == ("tiny-sdxl-turbo-lora", 0.6, 4)
    assert lora.scheduler == "EulerAncestralDiscreteScheduler"


def test_lcm_and_lcm_blend():
    lcm = resolve("lcm", "tiny-sd-lcm")
    assert (lcm.scheduler, lcm.guidance, lcm.accelerator) == ("LCMScheduler", 8.0, None)
    blend = resolve("lcm-blend", "tiny-sdxl")
    assert (blend.accelerator, blend.accelerator_weight, blend.scheduler_config) == (
        "tiny-sdxl-lcm-lora", 0.3, {"use_karras_sigmas": True})


def test_negative_prompt_warnings():
    assert "guidance 1 <= 1" in resolve("lcm-lora", "tiny-sd", negative="fog").warnings[0]
    assert resolve("lcm-lora", "tiny-sd", guidance=1.5, negative="fog").warnings == ()
    assert "LCM models" in resolve("lcm", "tiny-sd-lcm", negative="fog").warnings[0]
