"""Job spec validation: every field, pure (no I/O)."""

import pytest

from farm.errors import InputError
from farm.jobs.spec import Catalog, JobRequest, parse_adapter, resolve_job
from farm.jobs.values import parse_size


def resolve(**fields):
    base = {"prompt": "a lighthouse at dusk", "seed": 1, "model": "tiny-sd"}
    base.update(fields)
    return resolve_job(JobRequest(**base), Catalog(), "tiny-sd")


def test_defaults_come_from_the_recipe_and_the_model():
    spec = resolve()
    assert (spec.recipe, spec.scheduler, spec.steps, spec.guidance) == ("lcm-lora", "LCMScheduler", 4, 1.0)
    assert (spec.width, spec.height) == (64, 64)  # tiny-sd's native size
    assert [(a.name, a.weight, a.role) for a in spec.adapters] == [("tiny-sd-lcm-lora", 1.0, "accelerator")]


def test_style_adapters_stack_after_the_accelerator():
    spec = resolve(adapters=["tiny-sd-toy:0.8", ("tiny-sd-ink", "0.3")])
    assert [(a.name, a.weight) for a in spec.adapters] == [
        ("tiny-sd-lcm-lora", 1.0), ("tiny-sd-toy", 0.8), ("tiny-sd-ink", 0.3)]


def test_digest_covers_what_shapes_pixels_only():
    a, b = resolve(seed=1), resolve(seed=1)
    assert a.digest == b.digest
    assert resolve(seed=2).digest != a.digest
    assert resolve(steps=5).digest != a.digest
    assert resolve(adapters=["tiny-sd-toy:0.8"]).digest != resolve(adapters=["tiny-sd-toy:0.7"]).digest
    assert resolve(prompt="a  lighthouse\tat dusk").digest == a.digest  # whitespace is normalised


def test_negative_prompt_with_cfg_off_warns():
    spec = resolve(negative_prompt="blurry", guidance=1.0)
    assert any("negative prompt ignored" in w for w in spec.warnings)
    assert not resolve(negative_prompt="blurry", guidance=1.5).warnings


@pytest.mark.parametrize("fields, field, words", [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": None}, "prompt", "empty"),
    ({"prompt": 42}, "prompt", "text"),
    ({"prompt": "x" * 2001}, "prompt", "limit"),
    ({"prompt": "bad\x00byte"}, "prompt", "control"),
    ({"negative_prompt": "n" * 2001}, "negative_prompt", "limit"),
    ({"seed": -1}, "seed", "outside"),
    ({"seed": 2**32}, "seed", "outside"),
    ({"seed": "abc"}, "seed", "integer"),
    ({"seed": 1.5}, "seed", "integer"),
    ({"seed": True}, "seed", "integer"),
    ({"seed": None}, "seed", "missing"),
    ({"steps": 0}, "steps", "outside"),
    ({"steps": 9}, "steps", "outside"),
    ({"steps": "four"}, "steps", "integer"),
    ({"guidance": 7}, "guidance", "outside"),
    ({"guidance": -0.5}, "guidance", "outside"),
    ({"guidance": "nan"}, "guidance", "finite"),
    ({"guidance": "inf"}, "guidance", "finite"),
    ({"guidance": "high"}, "guidance", "number"),
    ({"width": 60}, "width", "outside"),
    ({"width": 100}, "width", "multiple of 8"),
    ({"height": 4096}, "height", "outside"),
    ({"height": "tall"}, "height", "integer"),
    ({"width": 2048, "height": 2048 + 8}, "height", "outside"),
    ({"model": "no-such-model"}, "model", "unknown"),
    ({"model": "../etc/passwd"}, "model", "not a valid name"),
    ({"model": "UPPER"}, "model", "not a valid name"),
    ({"recipe": "warp-speed"}, "recipe", "unknown"),
    ({"recipe": "lightning"}, "recipe", "does not support"),
    ({"recipe": "turbo"}, "recipe", "does not support"),
    ({"adapters": ["no-such-lora"]}, "adapter", "unknown"),
    ({"adapters": ["tiny-sdxl-toy"]}, "adapter", "tiny-sdxl"),
    ({"adapters": ["tiny-sd-toy:lots"]}, "adapter", "number"),
    ({"adapters": ["tiny-sd-toy:9"]}, "adapter", "outside"),
    ({"adapters": ["tiny-sd-toy", "tiny-sd-toy:0.5"]}, "adapter", "twice"),
    ({"adapters": ["bad name!"]}, "adapter", "not a valid name"),
    ({"adapters": [42]}, "adapter", "NAME[:WEIGHT]"),
])
def test_every_invalid_field_is_named(fields, field, words):
    with pytest.raises(InputError) as info:
        resolve(**fields)
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}: ") and words in message
    assert "\n" not in message


def test_lightning_refuses_step_counts_it_has_no_lora_for():
    with pytest.raises(InputError, match="steps: 3 steps needs a 3-step lightning LoRA"):
        resolve(model="tiny-sdxl", recipe="lightning", steps=3)


def test_accelerators_are_not_style_adapters():
    with pytest.raises(InputError, match="adapter: tiny-sd-hyper-8step is an accelerator"):
        resolve(adapters=["tiny-sd-hyper-8step"])


@pytest.mark.parametrize("adapters", [True, 3, 1.5])
def test_an_adapter_list_that_is_not_a_list_is_refused(adapters):
    # found by the fuzzer: a spec file with `adapters: true` crashed with a TypeError
    with pytest.raises(InputError, match="^adapter: expected a list of NAME"):
        resolve(adapters=adapters)


@pytest.mark.parametrize("text, expected", [("512x768", (512, 768)), ("64", (64, 64)), (" 64X64 ", (64, 64))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "x", "512x", "512*512", "-64x64", "1.5x2", "64x64x64"])
def test_parse_size_refuses(text):
    with pytest.raises(InputError, match="^size: "):
        parse_size(text)


def test_parse_adapter_default_weight():
    assert parse_adapter("tiny-sd-toy") == ("tiny-sd-toy", 1.0)
    assert parse_adapter({"name": "tiny-sd-toy", "weight": 0.25}) == ("tiny-sd-toy", 0.25)


def test_the_decoder_is_full_unless_a_preview_is_asked_for():
    full, tiny = resolve(), resolve(decoder="tiny")
    assert (full.decoder, tiny.decoder) == ("full", "tiny")
    assert full.group_key != tiny.group_key  # one decoder per pipeline call
    assert full.digest != tiny.digest  # a preview never stands in for a full render
    # the default leaves the digest as it was before decoders existed, so earlier renders are reused
    import hashlib
    import json
    from dataclasses import asdict

    shaping = asdict(full)
    del shaping["warnings"], shaping["decoder"], shaping["kind"], shaping["embeddings"]  # fields at their defaults
    for name in ("init_image", "mask_image", "control_image", "strength", "mask_blur", "controlnet", "control_scale",
                 "control_preprocess", "upscale", "training", "clip"):  # issues 13, 14 and 27, at their defaults too
        del shaping[name]
    assert full.digest == hashlib.sha256(json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with pytest.raises(InputError, match="^decoder: 'blurry' is not a decoder"):
        resolve(decoder="blurry")

