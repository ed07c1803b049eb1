"""The layers of an architecture, from its diffusers and transformers configs, without torch.

A LoRA or an embedding names layers of a model and gives their widths. Checking a file against
the arch it is registered for at ``add`` (not at render time on a worker) needs those layers on
the producer, which never imports torch; so they are derived here from the configs, walking the
module tree the way ``UNet2DConditionModel`` and ``CLIPTextModel`` build it. Only layers a LoRA
can adapt are listed (linear and convolution layers; norms and embeddings are not).

Every UNet layer also has its name in the original (LDM/SGM) UNet that checkpoints and Kohya's SDXL
LoRAs use (``input_blocks.4.1.proj_in`` is ``down_blocks.1.attentions.0.proj_in``).

tests/test_layers.py checks every table against the real modules (the tiny models as built,
the real families instantiated on torch's meta device) and the real families' configs against the
ones engine/configs ships for single-file checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    kind: str  # "linear" or "conv"
    fan_in: int
    fan_out: int
    kernel: int = 1  # convolutions: the kernel side


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


_TINY_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "in_channels": 4, "out_channels": 4,
              "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}
_TINY_SDXL_UNET = {**_TINY_UNET, "attention_head_dim": [2, 4], "use_linear_projection": True,
                   "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                   "transformer_layers_per_block": [1, 2], "cross_attention_dim": 96,
                   "projection_class_embeddings_input_dim": 6 * 8 + 64}
_SDXL_UNET = {"block_out_channels": [320, 640, 1280], "layers_per_block": 2, "in_channels": 4, "out_channels": 4,
              "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
              "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
              "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816}

# the UNet config of each arch (the fields that decide its layers)
UNET_CONFIGS: dict[str, dict] = {
    "sd15": {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "in_channels": 4,
             "out_channels": 4, "cross_attention_dim": 768, "attention_head_dim": 8,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3},
    "sdxl": _SDXL_UNET,
    # SSD-1B: SDXL with 36 of its 70 transformer blocks and the mid block's attention removed
    "ssd-1b": {**_SDXL_UNET, "transformer_layers_per_block": [1, 2, 4],
               "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]],
               "mid_block_type": "UNetMidBlock2D"},
    "tiny-sd": {**_TINY_UNET, "cross_attention_dim": 32, "attention_head_dim": 4},
    "tiny-sdxl": _TINY_SDXL_UNET,
    "tiny-ssd-1b": {**_TINY_SDXL_UNET, "transformer_layers_per_block": [1, 1]},
}

_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
_CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "projection_dim": 1280}
_TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
_TINY_CLIP_2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "projection_dim": 64}

# the text encoders of each arch, in pipeline order: (component, config); a projection_dim means
# CLIPTextModelWithProjection (its text_projection is a layer too)
TEXT_ENCODERS: dict[str, tuple[tuple[str, dict], ...]] = {
    "sd15": (("text_encoder", _CLIP_L),),
    "sdxl": (("text_encoder", _CLIP_L), ("text_encoder_2", _CLIP_G)),
    "ssd-1b": (("text_encoder", _CLIP_L), ("text_encoder_2", _CLIP_G)),
    "tiny-sd": (("text_encoder", _TINY_CLIP),),
    "tiny-sdxl": (("text_encoder", _TINY_CLIP), ("text_encoder_2", _TINY_CLIP_2)),
    "tiny-ssd-1b": (("text_encoder", _TINY_CLIP), ("text_encoder_2", _TINY_CLIP_2)),
}


class _Walk:
    """Collects (diffusers name -> Layer) and (diffusers name -> original name) while walking."""

    def __init__(self, config: dict):
        self.config = config
        self.layers: dict[str, Layer] = {}
        self.original: dict[str, str] = {}

    def linear(self, name: str, fan_in: int, fan_out: int, original: str | None = None) -> None:
        self.layers[name] = Layer("linear", fan_in, fan_out)
        if original:
            self.original[name] = original

    def conv(self, name: str, fan_in: int, fan_out: int, kernel: int, original: str | None = None) -> None:
        self.layers[name] = Layer("conv", fan_in, fan_out, kernel)
        if original:
            self.original[name] = original

    def resnet(self, name: str, fan_in: int, fan_out: int, temb: int, original: str) -> None:
        scale_shift = self.config.get("resnet_time_scale_shift") == "scale_shift"
        self.conv(f"{name}.conv1", fan_in, fan_out, 3, f"{original}.in_layers.2")
        self.linear(f"{name}.time_emb_proj", temb, fan_out * (2 if scale_shift else 1), f"{original}.emb_layers.1")
        self.conv(f"{name}.conv2", fan_out, fan_out, 3, f"{original}.out_layers.3")
        if fan_in != fan_out:
            self.conv(f"{name}.conv_shortcut", fan_in, fan_out, 1, f"{original}.skip_connection")

    def transformer(self, name: str, channels: int, depth: int, cross: int, heads: int, original: str) -> None:
        inner = heads * (channels // heads)
        linear_projection = self.config.get("use_linear_projection", False)
        for proj, (a, b) in (("proj_in", (channels, inner)), ("proj_out", (inner, channels))):
            if linear_projection:
                self.linear(f"{name}.{proj}", a, b, f"{original}.{proj}")
            else:
                self.conv(f"{name}.{proj}", a, b, 1, f"{original}.{proj}")
        for k in range(depth):
            block = f"transformer_blocks.{k}"
            for attn, kv in (("attn1", inner), ("attn2", cross)):
                for proj, fan_in in (("to_q", inner), ("to_k", kv), ("to_v", kv), ("to_out.0", inner)):
                    self.linear(f"{name}.{block}.{attn}.{proj}", fan_in, inner, f"{original}.{block}.{attn}.{proj}")
            # GEGLU feed-forward: one projection to twice the hidden width, gated, then back
            self.linear(f"{name}.{block}.ff.net.0.proj", inner, inner * 8, f"{original}.{block}.ff.net.0.proj")
            self.linear(f"{name}.{block}.ff.net.2", inner * 4, inner, f"{original}.{block}.ff.net.2")


def _unet(config: dict) -> _Walk:
    """Walk ``UNet2DConditionModel(**config)``'s module tree (diffusers' own construction order)."""
    walk = _Walk(config)
    channels = list(config["block_out_channels"])
    n = len(channels)
    per_block = _per_block(config.get("layers_per_block", 2), n)
    depth = _per_block(config.get("transformer_layers_per_block", 1), n)
    reverse_depth = config.get("reverse_transformer_layers_per_block") or list(reversed(depth))
    cross = _per_block(config.get("cross_attention_dim", 1280), n)
    heads = _per_block(config.get("num_attention_heads") or config.get("attention_head_dim", 8), n)
    temb = config.get("time_embedding_dim") or channels[0] * 4

    walk.conv("conv_in", config.get("in_channels", 4), channels[0], config.get("conv_in_kernel", 3),
              "input_blocks.0.0")
    walk.linear("time_embedding.linear_1", channels[0], temb, "time_embed.0")
    walk.linear("time_embedding.linear_2", temb, temb, "time_embed.2")
    if config.get("time_cond_proj_dim"):
        walk.linear("time_embedding.cond_proj", config["time_cond_proj_dim"], channels[0])
    if config.get("addition_embed_type") == "text_time":
        walk.linear("add_embedding.linear_1", config["projection_class_embeddings_input_dim"], temb, "label_emb.0.0")
        walk.linear("add_embedding.linear_2", temb, temb, "label_emb.0.2")

    out_channels = channels[0]
    index = 1  # input_blocks.0 is conv_in
    for i, block_type in enumerate(config["down_block_types"]):
        in_channels, out_channels = out_channels, channels[i]
        for j in range(per_block[i]):
            walk.resnet(f"down_blocks.{i}.resnets.{j}", in_channels if j == 0 else out_channels, out_channels, temb,
                        f"input_blocks.{index}.0")
            if block_type.startswith("CrossAttn"):
                walk.transformer(f"down_blocks.{i}.attentions.{j}", out_channels, depth[i], cross[i], heads[i],
                                 f"input_blocks.{index}.1")
            index += 1
        if i < n - 1:
            walk.conv(f"down_blocks.{i}.downsamplers.0.conv", out_channels, out_channels, 3, f"input_blocks.{index}.0.op")
            index += 1

    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type == "UNetMidBlock2DCrossAttn":
        walk.resnet("mid_block.resnets.0", channels[-1], channels[-1], temb, "middle_block.0")
        walk.transformer("mid_block.attentions.0", channels[-1], depth[-1], cross[-1], heads[-1], "middle_block.1")
        walk.resnet("mid_block.resnets.1", channels[-1], channels[-1], temb, "middle_block.2")
    elif mid_type == "UNetMidBlock2D":  # as UNet2DConditionModel builds it: one resnet, no attention
        walk.resnet("mid_block.resnets.0", channels[-1], channels[-1], temb, "middle_block.0")
    elif mid_type is not None:
        raise ValueError(f"mid block {mid_type} is not described here")

    reverse = list(reversed(channels))
    reverse_per_block = list(reversed(per_block))
    reverse_cross, reverse_heads = list(reversed(cross)), list(reversed(heads))
    out_channels = reverse[0]
    index = 0
    for i, block_type in enumerate(config["up_block_types"]):
        previous, out_channels = out_channels, reverse[i]
        skip_in = reverse[min(i + 1, n - 1)]
        layers = reverse_per_block[i] + 1
        block_depth = _per_block(reverse_depth[i], layers)
        attention = block_type.startswith("CrossAttn")
        for j in range(layers):
            skip = skip_in if j == layers - 1 else out_channels
            walk.resnet(f"up_blocks.{i}.resnets.{j}", (previous if j == 0 else out_channels) + skip, out_channels,
                        temb, f"output_blocks.{index}.0")
            if attention:
                walk.transformer(f"up_blocks.{i}.attentions.{j}", out_channels, block_depth[j], reverse_cross[i],
                                 reverse_heads[i], f"output_blocks.{index}.1")
            index += 1
        if i < n - 1:  # the upsampler sits at the end of the level's last original block
            walk.conv(f"up_blocks.{i}.upsamplers.0.conv", out_channels, out_channels, 3,
                      f"output_blocks.{index - 1}.{2 if attention else 1}.conv")

    walk.conv("conv_out", channels[0], config.get("out_channels", 4), config.get("conv_out_kernel", 3), "out.2")
    return walk


def unet_layers(config: dict) -> dict[str, Layer]:
    """The UNet's adaptable layers by their diffusers names."""
    return _unet(config).layers


def original_names(config: dict) -> dict[str, str]:
    """diffusers UNet layer name -> its name in the original (LDM/SGM) UNet."""
    return _unet(config).original


def clip_layers(config: dict) -> dict[str, Layer]:
    """A CLIP text encoder's adaptable layers, by transformers 4 names (``text_model.``...), the
    names Kohya's keys spell."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    layers = {}
    for i in range(config["num_hidden_layers"]):
        base = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layers[f"{base}.self_attn.{proj}"] = Layer("linear", hidden, hidden)
        layers[f"{base}.mlp.fc1"] = Layer("linear", hidden, inner)
        layers[f"{base}.mlp.fc2"] = Layer("linear", inner, hidden)
    if config.get("projection_dim"):
        layers["text_projection"] = Layer("linear", hidden, config["projection_dim"])
    return layers


def encoder_widths(arch: str) -> dict[str, int]:
    """component -> width of its token embeddings (what a textual-inversion vector must have)."""
    return {component: config["hidden_size"] for component, config in TEXT_ENCODERS[arch]}
