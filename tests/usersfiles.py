"""Test helpers: users' own files, built from the tiny models.

- ``peft_lora``: a tiny LoRA in the diffusers/peft layout (save_lora_weights), on every kind of
  layer a Kohya LoRA adapts (attention, projections, feed-forward, resnet convolutions and time
  projections, up/down samplers, conv_in/out, time embeddings) and on the text encoders.
- ``to_kohya``: the same LoRA in Kohya's layout, as sd-scripts writes it: ``lora_unet_``/``lora_te_``
  (SDXL ``lora_te1_``/``lora_te2_``) keys, UNet modules in diffusers spelling or original
  (LDM/SGM) spelling, and an ``alpha`` that is not the rank: ``lora_up`` is scaled by rank/alpha so
  that (alpha/rank) * up @ down is the same update (by powers of two, so exactly the same).
- ``embedding_file``: a textual-inversion embedding in A1111's layout with random vectors.
- ``header_file``: any safetensors file by names and shapes (zeros), no torch needed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "time_emb_proj", "conv_shortcut", "conv", "conv_in", "conv_out", "linear_1", "linear_2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def peft_lora(model_dir: Path, path: Path, *, xl: bool, seed: int, rank: int = 4, text_encoders: bool = True) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def adapted(model, targets, offset):
        torch.manual_seed(seed + offset)
        model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                                   target_modules=targets), model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.mul_(0.3)  # visible, and the images stay finite
        return get_peft_model_state_dict(model)

    layers = {"unet_lora_layers": adapted(UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet"),
                                          UNET_TARGETS, 0)}
    if text_encoders:
        encoders = [("text_encoder", CLIPTextModel)] + ([("text_encoder_2", CLIPTextModelWithProjection)] if xl else [])
        for i, (component, cls) in enumerate(encoders):
            layers[f"{component}_lora_layers"] = adapted(cls.from_pretrained(model_dir, subfolder=component),
                                                         TEXT_TARGETS, 1 + i)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    pipeline.save_lora_weights(str(path.parent), weight_name=path.name, safe_serialization=True, **layers)
    return path


def to_kohya(peft_path: Path, path: Path, *, xl: bool, rank: int = 4, alpha: float = 2.0,
             original: dict[str, str] | None = None, text_encoders: bool = True) -> Path:
    """``original``: diffusers UNet name -> original name (farm.models.layers.original_names) to spell
    UNet modules the LDM/SGM way; None keeps diffusers spelling (Kohya's SD1.x files)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = {}
    for key, tensor in load_file(str(peft_path)).items():
        component, rest = key.split(".", 1)
        module, part = rest.rsplit(".lora_", 1)
        if component == "unet":
            name = "lora_unet_" + (original or {}).get(module, module).replace(".", "_")
        elif not text_encoders:
            continue
        else:
            module = module if module.startswith("text_model.") else "text_model." + module
            prefix = {"text_encoder": "lora_te1_" if xl else "lora_te_", "text_encoder_2": "lora_te2_"}[component]
            name = prefix + module.replace(".", "_")
        if part.startswith("A"):
            out[f"{name}.lora_down.weight"] = tensor.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
        else:
            out[f"{name}.lora_up.weight"] = (tensor * (rank / alpha)).contiguous()
    save_file(out, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    return path


def embedding_file(path: Path, widths: list[int], *, vectors: int = 2, seed: int = 0, scale: float = 0.5) -> Path:
    """One tensor (``emb_params``) for one width, ``clip_l``/``clip_g`` for two (SDXL)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    names = ["emb_params"] if len(widths) == 1 else ["clip_l", "clip_g"]
    save_file({n: torch.randn(vectors, w, generator=generator) * scale for n, w in zip(names, widths)}, str(path))
    return path


def header_file(path: Path, tensors: dict[str, tuple[int, ...]], metadata: dict | None = None,
                dtype: str = "F32") -> Path:
    """A valid safetensors file of zeros by the format's definition (no torch)."""
    width = {"F32": 4, "F16": 2, "I64": 8}[dtype]
    header, offset = {}, 0
    for name, shape in tensors.items():
        count = 1
        for d in shape:
            count *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + width * count]}
        offset += width * count
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)
    return path


def kohya_header(arch: str, *, rank: int = 4, original: bool = False, modules: int | None = None,
                 text_encoders: bool = True) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a Kohya LoRA for ``arch`` on its attention projections (and its text
    encoders' q_proj), from farm.models.layers: what a real file of that arch holds, without torch."""
    from farm.models.layers import TEXT_ENCODERS, UNET_CONFIGS, clip_layers, original_names, unet_layers

    config = UNET_CONFIGS[arch]
    names = original_names(config)
    chosen = [(n, layer) for n, layer in unet_layers(config).items() if n.endswith((".to_q", ".to_k", ".proj_in"))]
    tensors: dict[str, tuple[int, ...]] = {}

    def add(name, layer):
        tail = (layer.kernel, layer.kernel) if layer.kind == "conv" else ()
        tensors[f"{name}.lora_down.weight"] = (rank, layer.fan_in, *tail)
        tensors[f"{name}.lora_up.weight"] = (layer.fan_out, rank, *((1, 1) if tail else ()))
        tensors[f"{name}.alpha"] = ()

    for module, layer in chosen[:modules]:
        add("lora_unet_" + (names[module] if original else module).replace(".", "_"), layer)
    if text_encoders:
        for component, text_config in TEXT_ENCODERS[arch]:
            prefix = "lora_te2_" if component == "text_encoder_2" else ("lora_te1_" if len(TEXT_ENCODERS[arch]) > 1
                                                                        else "lora_te_")
            for module, layer in clip_layers(text_config).items():
                if module.endswith("q_proj"):
                    add(prefix + module.replace(".", "_"), layer)
    return tensors
