"""The flow-matching families as data (no torch): the schnell, sd35-turbo and flux-hyper recipes
and their guardrails, the default recipe per model, FLUX/SD3 sizes in steps of 16, the built-in
catalogue, the transformer layer tables LoRAs are checked against at add, and `farm recipes list`."""

import json

import pytest
from click.testing import CliRunner

from farm.errors import InputError
from farm.jobs.spec import Catalog, JobRequest, resolve_job
from farm.models.catalog import BUILTIN_ADAPTERS, BUILTIN_MODELS, PREVIEW_DECODERS, SIZE_MULTIPLE
from farm.models.recipes import RECIPES, default_recipe, resolve_recipe
from tests.usersfiles import header_file

FLOW_RECIPES = ["schnell", "sd35-turbo", "flux-hyper"]


def resolve(recipe, model, steps=None, guidance=None, negative=""):
    return resolve_recipe(recipe, BUILTIN_MODELS[model], steps, guidance, negative, BUILTIN_ADAPTERS)


def spec(**fields):
    base = {"prompt": "a lighthouse at dusk", "seed": 1, "model": "tiny-flux"}
    base.update(fields)
    return resolve_job(JobRequest(**base), Catalog(), "tiny-sd")


def test_the_flow_recipes_are_consistent_and_listed_after_the_seven():
    assert list(RECIPES)[7:10] == FLOW_RECIPES  # the clips' recipe (issue 27) comes after them
    for name in FLOW_RECIPES:
        recipe = RECIPES[name]
        assert recipe.steps[0] <= recipe.default_steps <= recipe.steps[1]
        assert recipe.guidance[0] <= recipe.default_guidance <= recipe.guidance[1]
        assert recipe.scheduler == "FlowMatchEulerDiscreteScheduler"
    assert RECIPES["schnell"].as_dict()["pipeline_options"] == {"max_sequence_length": 256}
    assert RECIPES["flux-hyper"].as_dict()["distilled_guidance"] is True
    assert RECIPES["sd35-turbo"].as_dict()["distilled_guidance"] is False  # SD3 runs CFG above 1 (not Turbo)


@pytest.mark.parametrize("recipe, model, expected", [
    ("schnell", "flux-schnell", (4, 0.0, None, None)),
    ("schnell", "tiny-flux", (4, 0.0, None, None)),
    ("sd35-turbo", "sd35-large-turbo", (4, 0.0, None, None)),
    ("sd35-turbo", "tiny-sd3", (4, 0.0, None, None)),
    ("flux-hyper", "flux-dev", (8, 3.5, "hyper-flux-8step", 0.125)),
    ("flux-hyper", "tiny-flux-dev", (8, 3.5, "tiny-flux-hyper-8step", 0.125)),
])
def test_defaults(recipe, model, expected):
    r = resolve(recipe, model)
    assert (r.steps, r.guidance, r.accelerator, r.accelerator_weight) == expected
    assert (r.scheduler, r.scheduler_config, r.warnings) == ("FlowMatchEulerDiscreteScheduler", {}, ())


def test_the_hyper_flux_lora_is_the_model_cards_file():
    entry = BUILTIN_ADAPTERS["hyper-flux-8step"]
    assert (entry.source, entry.weight_name, entry.arch, entry.recipe, entry.steps) == (
        "ByteDance/Hyper-SD", "Hyper-FLUX.1-dev-8steps-lora.safetensors", "flux", "flux-hyper", 8)
    assert BUILTIN_MODELS["flux-schnell"].source == "black-forest-labs/FLUX.1-schnell"
    assert BUILTIN_MODELS["flux-dev"].source == "black-forest-labs/FLUX.1-dev"
    assert BUILTIN_MODELS["sd35-large-turbo"].source == "stabilityai/stable-diffusion-3.5-large-turbo"
    assert (PREVIEW_DECODERS["flux"], PREVIEW_DECODERS["sd3"]) == ("madebyollin/taef1", "madebyollin/taesd3")


@pytest.mark.parametrize("recipe, model, kwargs, field, words", [
    ("schnell", "tiny-flux", {"guidance": 1.0}, "guidance", "1 is not 0: the schnell recipe runs without guidance"),
    ("schnell", "flux-schnell", {"guidance": 3.5}, "guidance", "3.5 is not 0"),
    ("schnell", "tiny-flux", {"steps": 5}, "steps", "5 is outside 1..4 for the schnell recipe"),
    ("schnell", "tiny-flux-dev", {}, "recipe", "schnell needs a turbo model; tiny-flux-dev is a base model"),
    ("schnell", "tiny-sd", {}, "recipe", "schnell does not support the sd15 family"),
    ("sd35-turbo", "tiny-sd3", {"guidance": 4.0}, "guidance", "4 is not 0: the sd35-turbo recipe"),
    ("sd35-turbo", "tiny-flux", {}, "recipe", "sd35-turbo does not support the flux family"),
    ("flux-hyper", "tiny-flux", {}, "recipe", "flux-hyper needs a base model; tiny-flux is a turbo model"),
    ("flux-hyper", "tiny-flux-dev", {"steps": 4}, "steps", "4 is outside 8..18"),
    ("flux-hyper", "tiny-flux-dev", {"steps": 12}, "steps", "12 steps needs a 12-step flux-hyper LoRA"),
    ("flux-hyper", "flux-dev", {"steps": 16}, "steps", "16 steps needs a 16-step flux-hyper LoRA for flux models "
                                                       "(registered: 8)"),
    ("flux-hyper", "tiny-flux-dev", {"guidance": 7.0}, "guidance", "7 is outside 1..5"),
    ("lcm-lora", "tiny-flux", {}, "recipe", "lcm-lora does not support the flux family"),
    ("turbo", "tiny-sd3", {}, "recipe", "turbo does not support the sd3 family"),
])
def test_what_cannot_work_is_refused_with_a_reason(recipe, model, kwargs, field, words):
    with pytest.raises(InputError) as info:
        resolve(recipe, model, **kwargs)
    assert info.value.field == field and words in str(info.value)


def test_a_step_or_two_more_than_the_hyper_lora_is_allowed():
    assert resolve("flux-hyper", "tiny-flux-dev", steps=10).accelerator == "tiny-flux-hyper-8step"


@pytest.mark.parametrize("recipe, model, guidance, warning", [
    ("schnell", "tiny-flux", None, "negative prompt ignored: flux models do not run classifier-free guidance"),
    ("flux-hyper", "tiny-flux-dev", 3.5, "negative prompt ignored: flux models do not run classifier-free guidance"),
    ("sd35-turbo", "tiny-sd3", None, "negative prompt ignored: guidance 0 <= 1 turns classifier-free guidance off"),
])
def test_a_negative_prompt_without_cfg_is_accepted_with_a_warning(recipe, model, guidance, warning):
    assert resolve(recipe, model, guidance=guidance, negative="blurry").warnings == (warning,)


@pytest.mark.parametrize("model, recipe", [("tiny-flux", "schnell"), ("flux-schnell", "schnell"),
                                           ("tiny-flux-dev", "flux-hyper"), ("flux-dev", "flux-hyper"),
                                           ("tiny-sd3", "sd35-turbo"), ("sd35-large-turbo", "sd35-turbo"),
                                           ("tiny-sd", "lcm-lora"), ("sdxl", "lcm-lora"),
                                           ("tiny-sdxl-turbo", "lcm-lora")])  # the UNet families: as before
def test_the_default_recipe_follows_the_family_and_kind(model, recipe):
    assert default_recipe(BUILTIN_MODELS[model]) == recipe
    if model != "tiny-sdxl-turbo":  # (a turbo SDXL still names its recipe, as before)
        assert spec(model=model, width=64, height=64).recipe == recipe


@pytest.mark.parametrize("model, size, field", [("tiny-flux", (72, 64), "width"), ("tiny-flux", (64, 200), "height"),
                                                ("flux-schnell", (1000, 1024), "width"),
                                                ("tiny-sd3", (64, 104), "height")])
def test_flux_and_sd3_sizes_are_multiples_of_16(model, size, field):
    with pytest.raises(InputError) as info:
        spec(model=model, width=size[0], height=size[1])
    side = size[0] if field == "width" else size[1]
    assert info.value.field == field and f"{side} is not a multiple of 16" in str(info.value)
    assert SIZE_MULTIPLE == {"flux": 16, "sd3": 16}


def test_good_sizes_and_the_native_size():
    assert (spec(width=96, height=64).width, spec(model="flux-schnell").width) == (96, 1024)
    assert spec(model="tiny-sd", width=72, height=72).width == 72  # SD: multiples of 8 as before


@pytest.mark.parametrize("model, adapter, words", [
    ("tiny-flux", "tiny-sd-toy", "tiny-sd-toy is for tiny-sd models, not tiny-flux (tiny-flux)"),
    ("tiny-sd3", "tiny-flux-toy", "tiny-flux-toy is for tiny-flux models, not tiny-sd3 (tiny-sd3)"),
    ("tiny-sdxl", "tiny-sd3-ink", "tiny-sd3-ink is for tiny-sd3 models"),
    ("tiny-flux-dev", "tiny-flux-hyper-8step", "is an accelerator; pick it with --recipe"),
])
def test_a_lora_for_another_family_is_refused(model, adapter, words):
    with pytest.raises(InputError) as info:
        spec(model=model, adapters=[adapter])
    assert info.value.field == "adapter" and words in str(info.value)


def test_flux_loras_fit_schnell_and_dev_alike():
    assert [a.name for a in spec(model="tiny-flux-dev", adapters=["tiny-flux-toy:0.8"]).adapters] == [
        "tiny-flux-hyper-8step", "tiny-flux-toy"]
    assert [a.name for a in spec(adapters=["tiny-flux-ink"]).adapters] == ["tiny-flux-ink"]


def test_recipes_list_shows_the_flow_recipes():
    from farm.cli import cli

    text = CliRunner().invoke(cli, ["recipes", "list"], catch_exceptions=False).stdout
    for line in ("schnell    steps 1-4", "sd35-turbo steps 1-8", "flux-hyper steps 8,16"):
        assert line in text, text
    listed = {r["name"]: r for r in json.loads(CliRunner().invoke(cli, ["recipes", "list", "--json"]).stdout)}
    assert listed["schnell"]["guidance"] == {"min": 0.0, "max": 0.0, "default": 0.0}
    assert listed["flux-hyper"]["accelerator_weight"] == 0.125 and listed["flux-hyper"]["families"] == ["flux"]
    assert listed["sd35-turbo"]["model_kinds"] == ["turbo"]


# -- LoRA files for the transformer families, checked at add (farm.models.loras) ---------------------------
def lora_header(arch: str, modules, rank: int = 4, prefix: str = "transformer.") -> dict:
    from farm.models.layers import transformer_layers

    layers = transformer_layers(arch)
    tensors = {}
    for module in modules:
        layer = layers[module]
        tensors[f"{prefix}{module}.lora_A.weight"] = (rank, layer.fan_in)
        tensors[f"{prefix}{module}.lora_B.weight"] = (layer.fan_out, rank)
    return tensors


def test_diffusers_layout_loras_for_the_transformer_are_checked_against_its_layers(tmp_path):
    from farm.models.loras import inspect_lora

    flux = ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_out", "x_embedder"]
    path = header_file(tmp_path / "flux.safetensors", {
        **lora_header("tiny-flux", flux),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": (32, 4)})
    assert (inspect_lora(path, "tiny-flux").layout, inspect_lora(path, "tiny-flux").modules) == ("diffusers", 4)
    with pytest.raises(InputError, match="layers do not fit tiny-sd3 models|none of its 4 layers fit tiny-sd3"):
        inspect_lora(path, "tiny-sd3")
    with pytest.raises(InputError, match="a LoRA for another architecture"):
        inspect_lora(path, "flux")  # the real FLUX is 3072 wide
    sd3 = header_file(tmp_path / "sd3.safetensors", lora_header("sd3", ["transformer_blocks.37.attn.to_q",
                                                                        "pos_embed.proj"][:1]))
    assert inspect_lora(sd3, "sd3").modules == 1
    with pytest.raises(InputError, match="none of its 1 layers fit flux models"):
        inspect_lora(sd3, "flux")
    sd_lora = header_file(tmp_path / "sd.safetensors", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": (64, 4)})
    with pytest.raises(InputError, match="is not a layer of tiny-flux models"):
        inspect_lora(sd_lora, "tiny-flux")


def kohya_flux_header(arch: str, rank: int = 4) -> dict:
    from farm.models.layers import flux_original_layers

    tensors = {}
    for name, layer in flux_original_layers(arch).items():
        if name.startswith("double_blocks.0.") or name.endswith(("linear2", "modulation.lin")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = (rank, layer.fan_in)
            tensors[f"{key}.lora_up.weight"] = (layer.fan_out, rank)
            tensors[f"{key}.alpha"] = ()
    return tensors


def test_kohya_flux_loras_are_checked_in_black_forest_labs_names(tmp_path):
    from farm.models.loras import inspect_lora, kohya_names

    names = kohya_names("flux")
    assert names["lora_unet_double_blocks_0_img_attn_qkv"] == ("transformer", "double_blocks.0.img_attn.qkv")
    assert names["lora_unet_single_blocks_37_linear1"] == ("transformer", "single_blocks.37.linear1")
    assert names["lora_te1_text_model_encoder_layers_0_mlp_fc1"] == ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")
    for arch in ("flux", "tiny-flux"):
        path = header_file(tmp_path / f"{arch}.safetensors", kohya_flux_header(arch))
        lora = inspect_lora(path, arch)
        assert lora.layout == "kohya" and lora.modules > 10
    with pytest.raises(InputError, match="a LoRA for another architecture"):
        inspect_lora(tmp_path / "tiny-flux.safetensors", "flux")
    with pytest.raises(InputError, match="diffusers converts Kohya LoRAs of FLUX only"):
        inspect_lora(tmp_path / "flux.safetensors", "sd3")


def test_embeddings_are_refused_for_the_flow_families(tmp_path):
    from pathlib import Path

    from farm.models.registry import embedding_entry

    for family in ("flux", "tiny-sd3"):
        with pytest.raises(InputError, match="textual-inversion embeddings are for sd15, sdxl and ssd-1b models"):
            embedding_entry("neg", source="/x/neg.safetensors", family=family, cwd=Path(tmp_path))


def test_an_accelerator_is_registered_for_a_recipe_of_its_family(tmp_path):
    from pathlib import Path

    from farm.models.registry import adapter_entry

    entry = adapter_entry("hyper16", source="ByteDance/Hyper-SD", kind="accelerator", family="flux",
                          recipe="flux-hyper", steps=16, weight_name="Hyper-FLUX.1-dev-16steps-lora.safetensors",
                          cwd=Path(tmp_path))
    assert (entry.arch, entry.recipe, entry.steps) == ("flux", "flux-hyper", 16)
    for family, recipe, words in (("flux", None, "lcm-lora accelerators are for sd15, sdxl, ssd-1b models, not flux"),
                                  ("tiny-sd3", "flux-hyper", "flux-hyper accelerators are for flux models"),
                                  ("tiny-sdxl", "flux-hyper", "not tiny-sdxl")):
        with pytest.raises(InputError, match=words):
            adapter_entry("x", source="a/b", kind="accelerator", family=family, recipe=recipe, steps=8,
                          cwd=Path(tmp_path))
