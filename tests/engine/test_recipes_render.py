"""Every recipe renders on the tiny model of every family it supports, with the recipe's scheduler
(class and config), step count and guidance actually applied in the pipeline."""

import numpy as np
import pytest

from farm.jobs.spec import Catalog, JobRequest, resolve_job

pytest.importorskip("torch")

CASES = [
    ("lcm-lora", "tiny-sd", {}),
    ("lcm-lora", "tiny-sdxl", {}),
    ("lcm-lora", "tiny-ssd-1b", {"steps": 2}),
    ("lcm", "tiny-sd-lcm", {}),
    ("lcm", "tiny-sdxl-lcm", {"steps": 2}),
    ("turbo", "tiny-sdxl-turbo", {}),
    ("turbo", "tiny-sdxl", {"guidance": 2.0}),
    ("lightning", "tiny-sdxl", {"steps": 2}),
    ("lightning", "tiny-sdxl", {"steps": 8}),
    ("hyper", "tiny-sd", {"steps": 1}),
    ("hyper", "tiny-sd", {"steps": 5}),
    ("hyper", "tiny-sdxl", {"steps": 12, "guidance": 5.0}),
    ("lcm-blend", "tiny-sd", {}),
    ("lcm-blend", "tiny-ssd-1b", {"steps": 6}),
    ("plain", "tiny-sd", {"steps": 10}),
    ("plain", "tiny-sdxl", {"steps": 10}),
    ("plain", "tiny-ssd-1b", {"steps": 10}),
]


@pytest.fixture(scope="module")
def runner(model_cache):
    from engine.runner import Runner

    return Runner(device="cpu", model_cache=model_cache, max_models=2)


def as_job(spec):
    return spec  # the runner renders the job spec itself


@pytest.mark.parametrize("recipe, model, options", CASES, ids=[f"{r}-{m}-{o}" for r, m, o in CASES])
def test_recipe_renders_with_its_scheduler_steps_and_guidance(runner, recipe, model, options):
    spec = resolve_job(JobRequest(prompt="a lighthouse", seed=3, model=model, recipe=recipe,
                                  negative_prompt="fog", **options), Catalog(), "tiny-sd")
    resident, _ = runner.pipeline(model)
    calls = []
    hook = resident.pipe.unet.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((args[0].shape[0], kwargs.get("timestep_cond"))),
        with_kwargs=True)
    try:
        [pixels] = runner.render([as_job(spec)]).pixels
    finally:
        hook.remove()
    scheduler = resident.pipe.scheduler
    assert type(scheduler).__name__ == spec.scheduler or (spec.scheduler is None and
                                                           type(scheduler).__name__ == "EulerDiscreteScheduler")
    for key, value in spec.scheduler_config.items():
        assert scheduler.config[key] == value
    assert len(calls) == spec.steps  # one UNet call per step
    guided = spec.guidance > 1 and recipe != "lcm"
    rows = runner.bucket * (2 if guided else 1)  # CFG doubles the rows
    assert {n for n, _ in calls} == {rows}
    assert all((cond is not None) == (recipe == "lcm") for _, cond in calls)  # LCM models embed guidance
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1
    active = set(resident.pipe.get_active_adapters()) if resident.adapters.enabled and spec.adapters else set()
    assert active == {a.name for a in spec.adapters}
    if spec.adapters:
        weights = {a.name: a.weight for a in spec.adapters}
        assert weights[spec.adapters[0].name] == {"lcm-blend": 0.3, "turbo": 0.6}.get(recipe, 1.0)


def test_the_accelerator_changes_the_image(runner):
    base = resolve_job(JobRequest(prompt="a lighthouse", seed=3, model="tiny-sdxl", recipe="lightning", steps=4),
                       Catalog(), "tiny-sd")
    other = resolve_job(JobRequest(prompt="a lighthouse", seed=3, model="tiny-sdxl", recipe="lightning", steps=8),
                        Catalog(), "tiny-sd")
    a = runner.render([as_job(base)]).pixels[0]
    b = runner.render([as_job(other)]).pixels[0]
    assert not np.array_equal(a, b)
