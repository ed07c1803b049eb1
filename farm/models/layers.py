"""The layers of an architecture, from its diffusers and transformers configs, without torch.

A LoRA or an embedding names layers of a model and gives their widths. Checking a file against
the arch it is registered for at ``add`` (not at render time on a worker) needs those layers on
the producer, which never imports torch; so they are derived here from the configs, walking the
module tree the way ``UNet2DConditionModel`` and ``CLIPTextModel`` build it. Only layers a LoRA
can adapt are listed (linear and convolution layers; norms and embeddings are not).

Every UNet layer also has its name in the original (LDM/SGM) UNet that checkpoints and Kohya's SDXL
LoRAs use (``input_blocks.4.1.proj_in`` is ``down_blocks.1.attentions.0.proj_in``). The flow-matching
families (FLUX, SD3) have a transformer instead (``TRANSFORMER_CONFIGS``, ``transformer_layers``;
FLUX's layers also by Black Forest Labs' names, ``flux_original_layers``).

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


# -- transformer families (FLUX, SD3) ---------------------------------------------------------------
# The denoiser of the flow-matching families is a transformer, not a UNet. The fields of its
# diffusers config that decide its layers, per arch: the real ones are FLUX.1's (schnell's and
# dev's transformers differ only by dev's guidance embedding, listed here, so one arch covers both)
# and SD3.5 Large's; the tiny ones are engine/pipelines/tiny_flow.py's.
FLUX_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                    "pooled_projection_dim": 768, "guidance_embeds": True}
SD3_TRANSFORMER = {"patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 38, "attention_head_dim": 64,
                   "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
                   "pooled_projection_dim": 2048}
TRANSFORMER_CONFIGS: dict[str, tuple[str, dict]] = {  # arch -> (kind, config)
    "flux": ("flux", FLUX_TRANSFORMER),
    "tiny-flux": ("flux", {**FLUX_TRANSFORMER, "num_layers": 1, "num_single_layers": 2,
                           "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                           "pooled_projection_dim": 32}),
    "sd3": ("sd3", SD3_TRANSFORMER),
    "tiny-sd3": ("sd3", {**SD3_TRANSFORMER, "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
                         "joint_attention_dim": 128, "caption_projection_dim": 32, "pooled_projection_dim": 96}),
}
TEXT_ENCODERS.update({
    "flux": (("text_encoder", _CLIP_L),),  # T5 (text_encoder_2) takes no LoRA in diffusers
    "tiny-flux": (("text_encoder", _TINY_CLIP),),
    "sd3": (("text_encoder", {**_CLIP_L, "projection_dim": 768}), ("text_encoder_2", _CLIP_G)),
    "tiny-sd3": (("text_encoder", {**_TINY_CLIP, "projection_dim": 32}), ("text_encoder_2", _TINY_CLIP_2)),
})


def _flux_layers(config: dict) -> dict[str, Layer]:
    """``FluxTransformer2DModel(**config)``'s linear layers (MLP ratio 4, GELU feed-forwards)."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    out = config.get("out_channels") or config["in_channels"]
    layers = {"time_text_embed.timestep_embedder.linear_1": Layer("linear", 256, dim),
              "time_text_embed.timestep_embedder.linear_2": Layer("linear", dim, dim)}
    if config.get("guidance_embeds"):
        layers["time_text_embed.guidance_embedder.linear_1"] = Layer("linear", 256, dim)
        layers["time_text_embed.guidance_embedder.linear_2"] = Layer("linear", dim, dim)
    layers["time_text_embed.text_embedder.linear_1"] = Layer("linear", config["pooled_projection_dim"], dim)
    layers["time_text_embed.text_embedder.linear_2"] = Layer("linear", dim, dim)
    layers["context_embedder"] = Layer("linear", config["joint_attention_dim"], dim)
    layers["x_embedder"] = Layer("linear", config["in_channels"], dim)
    for i in range(config["num_layers"]):
        block = f"transformer_blocks.{i}"
        layers[f"{block}.norm1.linear"] = Layer("linear", dim, 6 * dim)
        layers[f"{block}.norm1_context.linear"] = Layer("linear", dim, 6 * dim)
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            layers[f"{block}.attn.{proj}"] = Layer("linear", dim, dim)
        for ff in ("ff", "ff_context"):
            layers[f"{block}.{ff}.net.0.proj"] = Layer("linear", dim, 4 * dim)
            layers[f"{block}.{ff}.net.2"] = Layer("linear", 4 * dim, dim)
    for i in range(config["num_single_layers"]):
        block = f"single_transformer_blocks.{i}"
        layers[f"{block}.norm.linear"] = Layer("linear", dim, 3 * dim)
        layers[f"{block}.proj_mlp"] = Layer("linear", dim, 4 * dim)
        layers[f"{block}.proj_out"] = Layer("linear", 5 * dim, dim)
        for proj in ("to_q", "to_k", "to_v"):
            layers[f"{block}.attn.{proj}"] = Layer("linear", dim, dim)
    layers["norm_out.linear"] = Layer("linear", dim, 2 * dim)
    layers["proj_out"] = Layer("linear", dim, config["patch_size"] ** 2 * out)
    return layers


def _sd3_layers(config: dict) -> dict[str, Layer]:
    """``SD3Transformer2DModel(**config)``'s linear and convolution layers (SD3.5 Large: no dual
    attention layers; the last block's context stream only feeds the image stream)."""
    if config.get("dual_attention_layers"):
        raise ValueError("SD3.5 Medium's dual attention layers are not described here")
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    patch = config["patch_size"]
    layers = {"pos_embed.proj": Layer("conv", config["in_channels"], dim, patch),
              "time_text_embed.timestep_embedder.linear_1": Layer("linear", 256, dim),
              "time_text_embed.timestep_embedder.linear_2": Layer("linear", dim, dim),
              "time_text_embed.text_embedder.linear_1": Layer("linear", config["pooled_projection_dim"], dim),
              "time_text_embed.text_embedder.linear_2": Layer("linear", dim, dim),
              "context_embedder": Layer("linear", config["joint_attention_dim"], config["caption_projection_dim"])}
    for i in range(config["num_layers"]):
        block, last = f"transformer_blocks.{i}", i == config["num_layers"] - 1
        layers[f"{block}.norm1.linear"] = Layer("linear", dim, 6 * dim)
        layers[f"{block}.norm1_context.linear"] = Layer("linear", dim, (2 if last else 6) * dim)
        for proj in ("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", "add_q_proj", "to_out.0"):
            layers[f"{block}.attn.{proj}"] = Layer("linear", dim, dim)
        if not last:
            layers[f"{block}.attn.to_add_out"] = Layer("linear", dim, dim)
        for ff in ("ff",) if last else ("ff", "ff_context"):
            layers[f"{block}.{ff}.net.0.proj"] = Layer("linear", dim, 4 * dim)
            layers[f"{block}.{ff}.net.2"] = Layer("linear", 4 * dim, dim)
    layers["norm_out.linear"] = Layer("linear", dim, 2 * dim)
    layers["proj_out"] = Layer("linear", dim, patch * patch * config.get("out_channels", config["in_channels"]))
    return layers


def transformer_layers(arch: str) -> dict[str, Layer]:
    """The adaptable layers of a transformer arch's denoiser, by their diffusers names."""
    kind, config = TRANSFORMER_CONFIGS[arch]
    return _flux_layers(config) if kind == "flux" else _sd3_layers(config)


def flux_original_layers(arch: str) -> dict[str, Layer]:
    """FLUX's layers as Black Forest Labs' checkpoints name them (what Kohya's FLUX LoRAs spell,
    ``lora_unet_double_blocks_0_img_attn_qkv``): q, k and v are one fused layer, a single block's
    ``linear1`` is q, k, v and the MLP's input together."""
    kind, config = TRANSFORMER_CONFIGS[arch]
    if kind != "flux":
        raise KeyError(arch)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    layers = {"img_in": Layer("linear", config["in_channels"], dim),
              "txt_in": Layer("linear", config["joint_attention_dim"], dim),
              "time_in.in_layer": Layer("linear", 256, dim), "time_in.out_layer": Layer("linear", dim, dim),
              "vector_in.in_layer": Layer("linear", config["pooled_projection_dim"], dim),
              "vector_in.out_layer": Layer("linear", dim, dim),
              "final_layer.linear": Layer("linear", dim, config["patch_size"] ** 2 * config["in_channels"]),
              "final_layer.adaLN_modulation.1": Layer("linear", dim, 2 * dim)}
    if config.get("guidance_embeds"):
        layers["guidance_in.in_layer"] = Layer("linear", 256, dim)
        layers["guidance_in.out_layer"] = Layer("linear", dim, dim)
    for i in range(config["num_layers"]):
        for stream in ("img", "txt"):
            base = f"double_blocks.{i}.{stream}"
            layers[f"{base}_attn.qkv"] = Layer("linear", dim, 3 * dim)
            layers[f"{base}_attn.proj"] = Layer("linear", dim, dim)
            layers[f"{base}_mlp.0"] = Layer("linear", dim, 4 * dim)
            layers[f"{base}_mlp.2"] = Layer("linear", 4 * dim, dim)
            layers[f"{base}_mod.lin"] = Layer("linear", dim, 6 * dim)
    for i in range(config["num_single_layers"]):
        base = f"single_blocks.{i}"
        layers[f"{base}.linear1"] = Layer("linear", dim, 3 * dim + 4 * dim)
        layers[f"{base}.linear2"] = Layer("linear", dim + 4 * dim, dim)
        layers[f"{base}.modulation.lin"] = Layer("linear", dim, 3 * dim)
    return layers
