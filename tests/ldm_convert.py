"""Diffusers layout -> the original LDM single-file layout (what A1111 and Civitai share), for tests.

The inverse of diffusers' ``single_file_utils`` mapping (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``),
derived from the component configs rather than hard-coded for the real models: diffusers' own
``convert_diffusers_to_original_*`` scripts assume two layers per block and four UNet levels, which
the tiny models do not have. Every diffusers key must map to an LDM name, or ``KeyError``: a key
left out would silently load as random weights (or stay on the meta device) on the way back.

Works on any tensors, meta ones included, so it also turns real-size configs into key/shape lists.
"""

from __future__ import annotations

import json
from pathlib import Path

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD15 = "cond_stage_model.transformer."
CLIP_SDXL = "conditioner.embedders.0.transformer."
OPEN_CLIP_SDXL = "conditioner.embedders.1.model."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(state: dict, prefixes: dict[str, str], inner: dict[str, dict[str, str]] | None = None) -> dict:
    """Each key's longest matching prefix replaced; ``inner[prefix]`` renames the next part too."""
    out = {}
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, value in state.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no LDM name for {key}")
        rest = key[len(prefix):]
        for old, new in (inner or {}).get(prefix, {}).items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        out[prefixes[prefix] + rest] = value
    return out


def unet_to_ldm(state: dict, config: dict) -> dict:
    layers = config["layers_per_block"]
    assert isinstance(layers, int), "one layers_per_block for every level"
    down, up = config["down_block_types"], config["up_block_types"]
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    resnets = []
    # input_blocks: conv_in, then per level `layers` (resnet, attention) pairs and a downsampler
    # (none after the last level): 1 + level * (layers + 1) + layer
    for level in range(len(down)):
        for layer in range(layers):
            index = 1 + level * (layers + 1) + layer
            resnets.append(f"down_blocks.{level}.resnets.{layer}.")
            prefixes[resnets[-1]] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{level}.attentions.{layer}."] = f"input_blocks.{index}.1."
        if level < len(down) - 1:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{1 + level * (layers + 1) + layers}.0.op."
    # middle_block: resnet, attention, resnet; a mid block without attention (SSD-1B's) is one resnet
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})
    resnets += ["mid_block.resnets.0.", "mid_block.resnets.1."]
    # output_blocks: per level `layers + 1` (resnet, attention); the upsampler sits after the last
    # layer's attention (.2) or, in a level without attention, right after its resnet (.1)
    for level, block in enumerate(up):
        for layer in range(layers + 1):
            index = level * (layers + 1) + layer
            resnets.append(f"up_blocks.{level}.resnets.{layer}.")
            prefixes[resnets[-1]] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{level}.attentions.{layer}."] = f"output_blocks.{index}.1."
        if level < len(up) - 1:
            slot = 2 if block.startswith("CrossAttn") else 1
            prefixes[f"up_blocks.{level}.upsamplers.0.conv."] = f"output_blocks.{level * (layers + 1) + layers}.{slot}.conv."
    converted = _rename(state, prefixes, {p: _RESNET for p in resnets})
    return {UNET + k: v for k, v in converted.items()}


def vae_to_ldm(state: dict, config: dict) -> dict:
    levels = len(config["down_block_types"])
    prefixes = {f"{part}.{name}.": f"{part}.{name}." for part in ("encoder", "decoder") for name in ("conv_in", "conv_out")}
    prefixes.update({"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out.",
                     "quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."})
    resnets = []
    for level in range(levels):
        resnets.append(f"encoder.down_blocks.{level}.resnets.")
        prefixes[resnets[-1]] = f"encoder.down.{level}.block."
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0.conv."] = f"encoder.down.{level}.downsample.conv."
        # the LDM decoder numbers its levels from the lowest resolution up
        resnets.append(f"decoder.up_blocks.{level}.resnets.")
        prefixes[resnets[-1]] = f"decoder.up.{levels - 1 - level}.block."
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0.conv."] = f"decoder.up.{levels - 1 - level}.upsample.conv."
    for part in ("encoder", "decoder"):
        for i in range(2):
            prefixes[f"{part}.mid_block.resnets.{i}."] = f"{part}.mid.block_{i + 1}."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    out = {}
    for key, value in _rename(state, prefixes).items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in key:
            head, tail = key.split(".mid.attn_1.")
            for new, old in _VAE_ATTENTION.items():
                if tail.startswith(new + "."):
                    tail = old + tail[len(new):]
                    break
            key = f"{head}.mid.attn_1.{tail}"
            if value.dim() == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        out[VAE + key] = value
    return out


def clip_to_ldm(state: dict, prefix: str) -> dict:
    """A transformers CLIPTextModel (flattened since transformers 5.6) as ``PREFIX text_model.*``."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def open_clip_to_ldm(state: dict, prefix: str) -> dict:
    """A CLIPTextModelWithProjection in OpenCLIP's layout (SDXL's second encoder): fused q/k/v
    (``in_proj``), ``resblocks``, and the projection stored transposed."""
    import torch

    layers = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
              "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
              "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {}
    fused: dict[str, dict[str, object]] = {}
    for key, value in state.items():
        if key in layers:
            out[prefix + layers[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith("text_model.encoder.layers."):
            index, rest = key[len("text_model.encoder.layers."):].split(".", 1)
            block = f"{prefix}transformer.resblocks.{index}."
            for which in ("q", "k", "v"):
                if rest.startswith(f"self_attn.{which}_proj."):
                    kind = rest.rsplit(".", 1)[1]  # weight or bias
                    fused.setdefault(f"{block}attn.in_proj_{kind}", {})[which] = value
                    break
            else:
                name = next((new + rest[len(old):] for old, new in parts.items() if rest.startswith(old + ".")), None)
                if name is None:
                    raise KeyError(f"no LDM name for {key}")
                out[block + name] = value
        else:
            raise KeyError(f"no LDM name for {key}")
    for key, qkv in fused.items():
        out[key] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def _component(model_dir: Path, name: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    folder = model_dir / name
    config = json.loads((folder / "config.json").read_text())
    [weights] = [p for p in folder.glob("*.safetensors")]
    return load_file(str(weights)), config


def pipeline_to_ldm(model_dir: str | Path) -> dict:
    """The single-file checkpoint of a diffusers SD1.5- or SDXL-style directory."""
    model_dir = Path(model_dir)
    xl = json.loads((model_dir / "model_index.json").read_text())["_class_name"].startswith("StableDiffusionXL")
    unet, unet_config = _component(model_dir, "unet")
    vae, vae_config = _component(model_dir, "vae")
    text, _ = _component(model_dir, "text_encoder")
    out = {**unet_to_ldm(unet, unet_config), **vae_to_ldm(vae, vae_config),
           **clip_to_ldm(text, CLIP_SDXL if xl else CLIP_SD15)}
    if xl:
        out.update(open_clip_to_ldm(_component(model_dir, "text_encoder_2")[0], OPEN_CLIP_SDXL))
    return out


def save_single_file(model_dir: str | Path, path: str | Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in pipeline_to_ldm(model_dir).items()}, str(path))
    return Path(path)
