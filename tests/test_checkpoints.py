"""Telling a model source's layout and architecture from a safetensors header or a directory's
configs, without torch: what `farm models add` refuses, and why (farm.models.checkpoints). The real
key layouts and the render path are in tests/engine/test_single_file.py."""

import json

import pytest

from farm.errors import InputError
from farm.models.checkpoints import ARCH_FAMILY, ARCH_SIGNATURES, check_model_source, config_signature, inspect_header
from farm.models.weights import SafetensorsHeader, TensorInfo

U = "model.diffusion_model."


def header(keys: dict[str, tuple], path="/m/x.safetensors") -> SafetensorsHeader:
    return SafetensorsHeader(path, {k: TensorInfo("F16", tuple(v)) for k, v in keys.items()})


def sd_like(*, text: dict, width=768, blocks=16, in_channels=4, vae=True) -> dict:
    keys = {f"{U}input_blocks.0.0.weight": (320, in_channels, 3, 3)}
    for i in range(blocks):
        keys[f"{U}input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"] = (320, width)
        keys[f"{U}input_blocks.{i}.1.transformer_blocks.0.attn1.to_q.weight"] = (320, 320)
    if vae:
        keys["first_stage_model.encoder.conv_in.weight"] = (128, 3, 3, 3)
    return {**keys, **text}


SD1_TEXT = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)}
XL_TEXT = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
           "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280)}


@pytest.mark.parametrize("text,width,blocks,arch", [
    (SD1_TEXT, 768, 16, "sd15"), (XL_TEXT, 2048, 70, "sdxl"), (XL_TEXT, 2048, 34, "ssd-1b"),
    (SD1_TEXT, 32, 4, "tiny-sd"), (XL_TEXT, 96, 8, "tiny-sdxl"), (XL_TEXT, 96, 4, "tiny-ssd-1b"),
])
def test_the_arch_is_told_by_text_encoders_width_and_transformer_blocks(text, width, blocks, arch):
    found = inspect_header(header(sd_like(text=text, width=width, blocks=blocks)))
    assert (found.layout, found.arch, found.family) == ("single-file", arch, ARCH_FAMILY[arch])
    assert f"cross-attention width {width}, {blocks} transformer blocks" in found.evidence


@pytest.mark.parametrize("keys,words", [
    ({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": (4, 320)}, "a LoRA, not a model"),
    ({"down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "one component in diffusers' layout"),
    ({"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3)}, "a VAE on its own"),
    ({"weight": (2, 2)}, "not a Stable Diffusion checkpoint"),
    (sd_like(text=SD1_TEXT, vae=False), "no VAE weights"),
    (sd_like(text={}), "no text encoder weights"),
    (sd_like(text={"cond_stage_model.model.token_embedding.weight": (49408, 1024)}, width=1024), "SD 2.x"),
    (sd_like(text={"conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)}), "SDXL refiner"),
    (sd_like(text=SD1_TEXT, in_channels=9), "takes 9 input channels"),
    (sd_like(text=XL_TEXT, width=2048, blocks=22), "matches no architecture the farm knows"),
])
def test_what_is_not_a_checkpoint_of_a_known_arch_is_refused_naming_the_file(keys, words):
    with pytest.raises(InputError, match=words) as refused:
        inspect_header(header(keys, "/models/odd.safetensors"))
    message = str(refused.value)
    assert message.startswith("source: /models/odd.safetensors: ") and "\n" not in message


def write_header_file(path, keys: dict) -> str:
    """A valid safetensors file of empty tensors (a leading dimension of 0: no bytes), which keeps
    the trailing dimensions the detection reads."""
    import struct

    entries = {k: {"dtype": "U8", "shape": [0] + list(v[1:]), "data_offsets": [0, 0]} for k, v in keys.items()}
    blob = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    return str(path)


def test_a_checkpoint_of_another_family_or_arch_is_refused(tmp_path):
    path = write_header_file(tmp_path / "xl.safetensors", sd_like(text=XL_TEXT, width=2048, blocks=70))
    assert check_model_source(path, family="sdxl", arch="sdxl") == "single-file"
    with pytest.raises(InputError, match=r"xl.safetensors: an SDXL checkpoint, not sd15 \(text encoders"):
        check_model_source(path, family="sd15", arch="sd15")
    with pytest.raises(InputError, match="an SDXL checkpoint, not ssd-1b"):
        check_model_source(path, family="ssd-1b", arch="ssd-1b")
    tiny = sd_like(text=SD1_TEXT, width=32, blocks=4)
    path = write_header_file(tmp_path / "tiny.safetensors", tiny)
    with pytest.raises(InputError, match="a tiny-sd checkpoint, not sd15 .*; register it with --arch tiny-sd"):
        check_model_source(path, family="sd15", arch="sd15")


def test_a_diffusers_directory_is_checked_by_its_configs_and_an_incomplete_one_is_taken_as_is(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_model_source(tmp_path / "empty", family="sd15", arch="sd15") == "diffusers"
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (model / "unet" / "config.json").write_text(json.dumps({
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "cross_attention_dim": 768}))
    assert check_model_source(model, family="sd15", arch="sd15") == "diffusers"
    with pytest.raises(InputError, match="an SD1.5 checkpoint, not sdxl"):
        check_model_source(model, family="sdxl", arch="sdxl")
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(InputError, match="a FluxPipeline directory"):
        check_model_source(model, family="sd15", arch="sd15")


def test_config_signatures_count_blocks_as_diffusers_builds_them():
    # SSD-1B: SDXL with a one-resnet mid block and fewer blocks per layer, asymmetric up the UNet
    ssd = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
           "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 2048,
           "transformer_layers_per_block": [1, 2, 4], "mid_block_type": "UNetMidBlock2D",
           "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]]}
    assert config_signature(ssd) == ARCH_SIGNATURES["ssd-1b"]
    sdxl = {**ssd, "transformer_layers_per_block": [1, 2, 10], "mid_block_type": "UNetMidBlock2DCrossAttn",
            "reverse_transformer_layers_per_block": None}
    assert config_signature(sdxl) == ARCH_SIGNATURES["sdxl"]
