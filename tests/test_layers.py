"""farm.models.layers against the real modules: every arch's table equals the linear and convolution layers
of the UNet and text encoders diffusers and transformers build from the same configs (the real
families on torch's meta device, no weights), the tiny archs' configs are the built tiny models',
and the original (LDM/SGM) names are the ones diffusers' own Kohya converter maps."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.models.layers import TEXT_ENCODERS, UNET_CONFIGS, clip_layers, original_names, unet_layers
from farm.models.loras import kohya_respelling

torch = pytest.importorskip("torch")

ARCHS = sorted(UNET_CONFIGS)


def real_layers(model) -> dict:
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            found[name] = ("linear", module.in_features, module.out_features, 1)
        elif isinstance(module, torch.nn.Conv2d):
            found[name] = ("conv", module.in_channels, module.out_channels, module.kernel_size[0])
    return found


def table(layers) -> dict:
    return {name: (layer.kind, layer.fan_in, layer.fan_out, layer.kernel) for name, layer in layers.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_the_tables_are_the_modules_diffusers_and_transformers_build(arch):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[arch])
    assert table(unet_layers(UNET_CONFIGS[arch])) == real_layers(unet)
    for _component, config in TEXT_ENCODERS[arch]:
        cls = CLIPTextModelWithProjection if config.get("projection_dim") else CLIPTextModel
        with torch.device("meta"):
            encoder = cls(CLIPTextConfig(**config))
        built = {name if name.startswith(("text_model.", "text_projection")) else f"text_model.{name}": layer
                 for name, layer in real_layers(encoder).items()}  # transformers 5 dropped the text_model level
        assert table(clip_layers(config)) == built


@pytest.mark.parametrize("arch", ["tiny-sd", "tiny-sdxl", "tiny-ssd-1b"])
def test_the_tiny_tables_are_the_built_tiny_models(model_cache, arch):
    from engine.sources import resolve

    built = Path(resolve(f"builtin:{arch}", model_cache).path)
    unet = json.loads((built / "unet" / "config.json").read_text())
    for key, value in UNET_CONFIGS[arch].items():
        assert unet[key] == value, f"{arch} unet {key}"
    for component, config in TEXT_ENCODERS[arch]:
        encoder = json.loads((built / component / "config.json").read_text())
        assert {k: encoder[k] for k in config} == config, f"{arch} {component}"


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "ssd-1b"])
def test_the_real_families_configs_are_the_ones_engine_configs_ships(arch):
    configs = Path(__file__).resolve().parents[1] / "engine" / "configs" / arch
    if not (configs / "unet" / "config.json").exists():
        pytest.skip(f"no engine/configs/{arch}")
    unet = json.loads((configs / "unet" / "config.json").read_text())
    for key, value in UNET_CONFIGS[arch].items():
        assert unet[key] == value, f"{arch} unet {key}"
    for component, config in TEXT_ENCODERS[arch]:
        encoder = json.loads((configs / component / "config.json").read_text())
        assert {k: encoder[k] for k in config if k != "projection_dim"} == {
            k: v for k, v in config.items() if k != "projection_dim"}
        with_projection = encoder["architectures"] == ["CLIPTextModelWithProjection"]
        assert with_projection == ("projection_dim" in config)


@pytest.mark.parametrize("arch", ["sdxl", "ssd-1b", "tiny-sdxl", "sd15", "tiny-sd"])
def test_original_names_are_the_ones_diffusers_kohya_converter_maps(arch):
    """The converter load_lora_weights runs on a Kohya file, key by key: for SDXL pipelines (which
    pass their UNet config) original names map to every layer; for SD1.5 pipelines (which do not)
    the keys respelt by farm.models.loras do."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    config = UNET_CONFIGS[arch]
    layers, original = unet_layers(config), original_names(config)
    state = {}
    for name in layers:
        key = "lora_unet_" + original[name].replace(".", "_") if name in original else None
        if key:
            state.update({f"{key}.lora_down.weight": torch.zeros(1), f"{key}.lora_up.weight": torch.zeros(1),
                          f"{key}.alpha": torch.tensor(1.0)})
    xl = arch in ("sdxl", "ssd-1b", "tiny-sdxl")  # StableDiffusionXLPipeline's archs
    respelt = kohya_respelling(state, config, original=xl)
    state = {respelt.get(k, k): v for k, v in state.items()}
    if xl:
        state = _maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(layers_per_block=config["layers_per_block"]))
    converted, _alphas = _convert_non_diffusers_lora_to_diffusers(state)
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    assert {key.rsplit(".lora_", 1)[0] for key in peft} == set(original)
