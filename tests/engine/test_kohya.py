"""Kohya / A1111 LoRAs through the real loader: the same tiny LoRA in the diffusers/peft layout and
in Kohya's (alpha != rank, text-encoder keys, UNet modules in diffusers or original spelling)
renders the same pixels, alone and stacked with the LCM-LoRA, on SD1.5 and SDXL."""

from pathlib import Path

import numpy as np
import pytest

from farm.jobs.spec import Catalog, direct_spec
from farm.models.catalog import BUILTIN_ADAPTERS, AdapterEntry
from farm.models.layers import UNET_CONFIGS, original_names
from farm.models.loras import inspect_lora
from tests.usersfiles import peft_lora, to_kohya

torch = pytest.importorskip("torch")

MODELS = ["tiny-sd", "tiny-sdxl"]


@pytest.fixture(scope="module")
def loras(tmp_path_factory, model_cache):
    """name -> registered entry: per model, the peft LoRA, Kohya in both spellings, and Kohya
    without its text-encoder keys."""
    from engine.sources import resolve

    root = tmp_path_factory.mktemp("loras")
    entries = {}
    for model in MODELS:
        xl = model.endswith("xl")
        peft = peft_lora(Path(resolve(f"builtin:{model}", model_cache).path), root / model / "peft.safetensors",
                         xl=xl, seed=11)
        original = original_names(UNET_CONFIGS[model])
        files = {
            "peft": peft,
            "kohya": to_kohya(peft, root / model / "kohya.safetensors", xl=xl, alpha=2.0),
            "kohya-original": to_kohya(peft, root / model / "kohya_ldm.safetensors", xl=xl, alpha=8.0,
                                       original=original),
            "kohya-unet": to_kohya(peft, root / model / "kohya_unet.safetensors", xl=xl, alpha=2.0,
                                   text_encoders=False),
        }
        for kind, path in files.items():
            lora = inspect_lora(path, model)  # what `farm adapters add` checks and records
            assert lora.layout == ("diffusers" if kind == "peft" else "kohya")
            entries[f"{model}-{kind}"] = AdapterEntry(f"{model}-{kind}", str(path), model, "style", sha256=lora.sha256,
                                                      layout=lora.layout, addnet_sha256=lora.addnet_sha256,
                                                      builtin=False)
    return entries


@pytest.fixture(scope="module")
def runner(model_cache, loras):
    from engine.runner import Runner

    catalog = Catalog(adapters={**BUILTIN_ADAPTERS, **loras})
    return Runner(device="cpu", model_cache=model_cache, catalog=lambda: catalog, max_adapters=16)


def render(runner, model, *styles, accelerator=True, seed=3):
    adapters = ([(f"{model}-lcm-lora", 1.0, "accelerator")] if accelerator else []) + [(s, 0.8) for s in styles]
    # 2 steps, not 4: a layout loads the same weights or it does not, and 2 steps show it as 4 do
    spec = direct_spec(model=model, seed=seed, family="sdxl" if model.endswith("xl") else "sd15", adapters=adapters,
                       prompt="a toy robot, studio light", steps=2)
    return runner.render([spec]).pixels[0]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("accelerator", [False, True], ids=["alone", "with-lcm-lora"])
def test_the_same_lora_in_both_layouts_renders_the_same_pixels(runner, model, accelerator):
    peft = render(runner, model, f"{model}-peft", accelerator=accelerator)
    assert not np.array_equal(peft, render(runner, model, accelerator=accelerator)), "the LoRA changes nothing"
    for kind in ("kohya", "kohya-original"):
        assert np.array_equal(peft, render(runner, model, f"{model}-{kind}", accelerator=accelerator)), kind
    # the text-encoder keys were loaded too: without them the image is another
    assert not np.array_equal(peft, render(runner, model, f"{model}-kohya-unet", accelerator=accelerator))


def test_a_kohya_lora_stacks_and_switches_like_any_other(runner):
    toy_and_kohya = render(runner, "tiny-sd", "tiny-sd-toy", "tiny-sd-kohya")
    toy_and_peft = render(runner, "tiny-sd", "tiny-sd-toy", "tiny-sd-peft")
    assert np.array_equal(toy_and_kohya, toy_and_peft)
    assert not np.array_equal(toy_and_kohya, render(runner, "tiny-sd", "tiny-sd-toy"))
