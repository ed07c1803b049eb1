"""LoRA files checked at add without torch (farm.models.loras): the Kohya and diffusers layouts, a LoRA
of another arch or of no arch, and what is no LoRA at all, each refused naming the file."""

import re
import struct

import pytest

from farm.errors import InputError
from farm.models.layers import UNET_CONFIGS, original_names, unet_layers
from farm.models.loras import inspect_lora, kohya_names, kohya_respelling, layout_of
from tests.usersfiles import header_file, kohya_header


@pytest.mark.parametrize("arch", ["tiny-sd", "tiny-sdxl", "sd15", "sdxl"])
@pytest.mark.parametrize("original", [False, True])
def test_a_kohya_lora_of_the_arch_is_accepted_in_either_unet_spelling(tmp_path, arch, original):
    path = header_file(tmp_path / "k.safetensors", kohya_header(arch, original=original),
                       metadata={"ss_network_dim": "4"})
    lora = inspect_lora(path, arch)
    assert lora.layout == "kohya" and lora.modules > 2
    assert len(lora.sha256) == len(lora.addnet_sha256) == 64 and lora.sha256 != lora.addnet_sha256


def test_the_brief_s_original_layout_example_is_a_resnet_time_projection():
    names = kohya_names("sd15")
    assert names["lora_unet_input_blocks_1_0_emb_layers_1"] == ("unet", "down_blocks.0.resnets.0.time_emb_proj")
    assert names["lora_unet_down_blocks_0_resnets_0_time_emb_proj"] == ("unet", "down_blocks.0.resnets.0.time_emb_proj")
    assert names["lora_te_text_model_encoder_layers_11_mlp_fc2"] == ("text_encoder", "text_model.encoder.layers.11.mlp.fc2")
    xl = kohya_names("sdxl")
    assert xl["lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k"] == (
        "unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k")
    assert xl["lora_unet_output_blocks_2_2_conv"] == ("unet", "up_blocks.0.upsamplers.0.conv")
    assert xl["lora_unet_label_emb_0_0"] == ("unet", "add_embedding.linear_1")
    assert xl["lora_te2_text_projection"] == ("text_encoder_2", "text_projection")
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" not in names  # SD1.5 has one text encoder


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "tiny-sd", "tiny-sdxl"])
def test_the_two_spellings_never_name_two_different_layers(arch):
    config = UNET_CONFIGS[arch]
    layers, original = unet_layers(config), original_names(config)
    assert set(original) <= set(layers) and len(set(original.values())) == len(original)
    # every diffusers-spelt and original-spelt key is one layer's: no name is claimed twice
    flat = [n.replace(".", "_") for n in layers] + [o.replace(".", "_") for o in original.values()]
    assert len(set(flat)) == len(flat)


def test_a_diffusers_lora_is_accepted_in_every_spelling(tmp_path):
    up, down = (64, 4), (4, 64)  # tiny-sd's attention level is 64 wide
    block = "down_blocks.1.attentions.0.transformer_blocks.0"
    peft = {f"unet.{block}.attn1.to_q.lora_A.weight": down, f"unet.{block}.attn1.to_q.lora_B.weight": up,
            "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),  # transformers 5 names
            "text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight": (32, 4)}
    assert inspect_lora(header_file(tmp_path / "peft.safetensors", peft), "tiny-sd").layout == "diffusers"
    old = {f"{block}.attn1.processor.to_q_lora.down.weight": down, f"{block}.attn1.processor.to_q_lora.up.weight": up,
           "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight": (4, 32),
           "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.up.weight": (32, 4)}
    lora = inspect_lora(header_file(tmp_path / "old.safetensors", old), "tiny-sd")
    assert (lora.layout, lora.modules) == ("diffusers", 2)


@pytest.mark.parametrize("made_for,registered_as", [("sd15", "sdxl"), ("sdxl", "sd15"), ("tiny-sdxl", "tiny-sd"),
                                                    ("tiny-sd", "sd15"), ("sdxl", "tiny-sdxl")])
def test_a_lora_for_another_arch_is_refused_naming_the_file(tmp_path, made_for, registered_as):
    path = header_file(tmp_path / "other.safetensors", kohya_header(made_for, original=made_for.endswith("xl")))
    with pytest.raises(InputError) as refused:
        inspect_lora(path, registered_as)
    message = str(refused.value)
    assert message.startswith(f"source: {path}: ") and re.search(f"layers (do not )?fit {registered_as} models", message)
    assert "another architecture" in message and "\n" not in message


def test_keys_that_match_no_layer_are_refused(tmp_path):
    path = header_file(tmp_path / "nowhere.safetensors", {"lora_unet_middle_block_9_proj_in.lora_down.weight": (4, 8),
                                                          "lora_unet_middle_block_9_proj_in.lora_up.weight": (8, 4)})
    with pytest.raises(InputError, match=r"none of its 1 layers fit sd15 models \(lora_unet_middle_block_9_proj_in is "
                                         r"not a layer of sd15 models\)"):
        inspect_lora(path, "sd15")


@pytest.mark.parametrize("tensors,words", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4)}, "not a LoRA: no lora_down/lora_up"),
    ({"lora_unet_conv_in.hada_w1_a": (4, 4)}, "LoHa (LyCORIS) layers"),
    ({"lora_unet_conv_in.lokr_w1": (4, 4)}, "LoKr (LyCORIS) layers"),
    ({"lora_unet_conv_in.lora_down.weight": (4, 4, 3, 3), "unet.conv_in.lora_A.weight": (4, 4)}, "mixes Kohya keys"),
    ({"lora_unet_conv_in.lora_down.weight": (4, 4, 3, 3)}, "has no lora_up weight"),
])
def test_what_is_no_lora_is_refused(tmp_path, tensors, words):
    path = header_file(tmp_path / "x.safetensors", tensors)
    with pytest.raises(InputError, match=f"^source: {path}: .*{re.escape(words)}"):
        inspect_lora(path, "sd15")


@pytest.mark.parametrize("content,words", [(b"PK\x03\x04...", "zip archive"), (b"\x80\x02}q\x00.", "pickle"),
                                           (struct.pack("<Q", 999) + b"{}", "truncated, or another format")])
def test_pickles_zips_and_truncated_files_are_refused(tmp_path, content, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"^source: {path}: .*{words}"):
        inspect_lora(path, "sd15")


def test_kohya_s_hash_in_the_metadata_is_the_one_a1111_writes(tmp_path):
    tensors = kohya_header("tiny-sd", modules=2, text_encoders=False)
    plain = inspect_lora(header_file(tmp_path / "a.safetensors", tensors), "tiny-sd")
    stamped = inspect_lora(header_file(tmp_path / "b.safetensors", tensors, metadata={"sshs_model_hash": "ab" * 32}),
                           "tiny-sd")
    assert stamped.addnet_sha256 == "ab" * 32  # A1111: metadata's sshs_model_hash first, else the tensors' hash
    assert plain.addnet_sha256 != plain.sha256


def test_respelling_for_the_pipeline_s_converter():
    config = UNET_CONFIGS["sdxl"]
    keys = ["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_unet_input_blocks_4_1_proj_in.alpha",
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
            "lora_unet_add_embedding_linear_1.lora_up.weight"]
    to_diffusers = kohya_respelling(keys, config, original=False)
    assert to_diffusers == {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight":
                            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
                            "lora_unet_input_blocks_4_1_proj_in.alpha": "lora_unet_down_blocks_1_attentions_0_proj_in.alpha"}
    assert kohya_respelling(keys, config, original=True) == {
        "lora_unet_add_embedding_linear_1.lora_up.weight": "lora_unet_label_emb_0_0.lora_up.weight"}
    assert kohya_respelling(keys, {"block_out_channels": "?"}, original=True) == {}  # a UNet it cannot describe


def test_layout_of():
    assert layout_of("f", ["lora_te2_x.alpha", "lora_unet_y.lora_up.weight"]) == "kohya"
    assert layout_of("f", ["unet.a.lora_A.weight"]) == "diffusers"


@pytest.mark.parametrize("length", [0x180, 0x4B50])  # first byte 0x80 (a pickle's), first bytes "PK" (a zip's)
def test_a_safetensors_file_whose_length_looks_like_a_pickle_or_zip_is_read(tmp_path, length):
    import json

    blob = json.dumps({"lora_unet_conv_in.alpha": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "lucky.safetensors"
    path.write_bytes(struct.pack("<Q", length) + blob.ljust(length) + b"\0" * 4)  # JSON may end in spaces
    assert path.read_bytes()[:1] == b"\x80" or path.read_bytes()[:2] == b"PK"
    from farm.models.weights import read_header

    assert read_header(path).keys() == ["lora_unet_conv_in.alpha"]
