"""What a model source holds, told without torch: a diffusers directory, or one single-file
checkpoint in the original LDM key layout (what A1111 and Civitai share), and which architecture
its keys and shapes say. `farm models add` refuses a file of another family than the one given,
at once, instead of a worker failing on it later.

A single file names its parts by prefix: the UNet ``model.diffusion_model.*``, the VAE
``first_stage_model.*``, and the text encoders

- SD1.5: CLIP ViT-L, ``cond_stage_model.transformer.*`` (SD 2.x: OpenCLIP, ``cond_stage_model.model.*``);
- SDXL and SSD-1B: CLIP ViT-L ``conditioner.embedders.0.transformer.*`` and OpenCLIP ViT-bigG
  ``conditioner.embedders.1.model.*`` (the SDXL refiner has only ``conditioner.embedders.0.model.*``).

Within a family the UNet tells the arch apart: its cross-attention width (the text encoders'
widths, concatenated: 768 for SD1.5, 768 + 1280 for SDXL) and how many transformer blocks it has
(SSD-1B keeps 34 of SDXL's 70). A diffusers directory says the same in model_index.json and
unet/config.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from farm.errors import InputError
from farm.models.catalog import BUILTIN_MODELS, TINY_ARCHS
from farm.models.weights import SafetensorsHeader, read_header

DIFFUSERS, SINGLE_FILE = "diffusers", "single-file"
LAYOUTS = (DIFFUSERS, SINGLE_FILE)
UNET, VAE = "model.diffusion_model.", "first_stage_model."


@dataclass(frozen=True)
class Signature:
    context_dim: int  # cross-attention width
    transformer_blocks: int  # BasicTransformerBlocks in the whole UNet
    in_channels: int = 4  # 9: inpainting, 8: instruct-pix2pix

    def describe(self) -> str:
        return f"cross-attention width {self.context_dim}, {self.transformer_blocks} transformer blocks"


ARCH_SIGNATURES = {
    "sd15": Signature(768, 16),
    "sdxl": Signature(2048, 70),
    "ssd-1b": Signature(2048, 34),
    # engine/pipelines/tiny.py: one cross-attention level, a layer down and two up, plus the mid
    # block; transformer_layers_per_block (1, 2) for tiny-sdxl, (1, 1) for tiny-ssd-1b
    "tiny-sd": Signature(32, 1 + 1 + 2),
    "tiny-sdxl": Signature(32 + 64, 2 + 2 + 2 * 2),
    "tiny-ssd-1b": Signature(32 + 64, 1 + 1 + 2),
}
ARCH_FAMILY = {arch: BUILTIN_MODELS[arch].family if arch in TINY_ARCHS else arch for arch in ARCH_SIGNATURES}
_LABEL = {"sd15": "SD1.5", "sdxl": "SDXL", "ssd-1b": "SSD-1B"}
# which text-encoder layout a pipeline class or a single file has: "sd1" (sd15) or "xl" (sdxl, ssd-1b)
_GROUP = {"sd15": "sd1", "sdxl": "xl", "ssd-1b": "xl"}
_PIPELINES = {"StableDiffusionPipeline": "sd1", "StableDiffusionXLPipeline": "xl"}


@dataclass(frozen=True)
class Checkpoint:
    layout: str  # DIFFUSERS or SINGLE_FILE
    arch: str | None  # None: a directory without the files to tell (yet)
    evidence: str = ""

    @property
    def family(self) -> str | None:
        return ARCH_FAMILY.get(self.arch) if self.arch else None


def _label(arch: str) -> str:
    return f"an {_LABEL[arch]}" if arch in _LABEL else f"a {arch} ({ARCH_FAMILY[arch]} family)"


def _match(group: str, signature: Signature, path: str, what: str) -> str:
    for arch, known in ARCH_SIGNATURES.items():
        if _GROUP[ARCH_FAMILY[arch]] == group and known == signature:
            return arch
    if signature.in_channels != 4:
        raise _refuse(path, f"{what} whose UNet takes {signature.in_channels} input channels (an inpainting or "
                            "instruct-pix2pix model); the farm runs text-to-image models, with 4")
    known = ", ".join(f"{a} {s.context_dim}/{s.transformer_blocks}" for a, s in ARCH_SIGNATURES.items()
                      if _GROUP[ARCH_FAMILY[a]] == group)
    raise _refuse(path, f"{what} whose UNet matches no architecture the farm knows ({signature.describe()}; "
                        f"known width/blocks: {known})")


# -- single files ---------------------------------------------------------------------------------
_BLOCK_RE = re.compile(r"^model\.diffusion_model\.(.+\.transformer_blocks\.\d+)\.")


def _text_group(keys: list[str], path: str) -> tuple[str, str]:
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.0.transformer.") and has("conditioner.embedders.1.model."):
        return "xl", "text encoders conditioner.embedders.0 and .1"
    if has("cond_stage_model.transformer."):
        return "sd1", "text encoder cond_stage_model.transformer"
    if has("cond_stage_model.model."):
        raise _refuse(path, "an SD 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*): not a family "
                            "the farm runs (sd15, sdxl, ssd-1b)")
    if has("conditioner.embedders.0.model."):
        raise _refuse(path, "an SDXL refiner checkpoint (one OpenCLIP text encoder): not a family the farm runs")
    raise _refuse(path, "no text encoder weights (cond_stage_model.* or conditioner.embedders.*): a checkpoint "
                        "without its text encoders cannot be loaded as a pipeline")


def _refuse(path: str, what: str) -> InputError:
    return InputError("source", f"{path}: {what}")


def inspect_header(header: SafetensorsHeader) -> Checkpoint:
    """The arch of a single-file checkpoint, from its tensor names and shapes; ``InputError``
    naming the file for anything else (a LoRA, one diffusers component, SD 2.x, a refiner)."""
    path, keys = header.path, header.keys()
    if any("lora_" in k or ".lora." in k for k in keys):
        raise _refuse(path, "a LoRA, not a model: add it with `farm adapters add`")
    if not any(k.startswith(UNET) for k in keys):
        if any(k.startswith(("encoder.", "decoder.")) for k in keys):
            raise _refuse(path, "a VAE on its own (encoder.*, decoder.*), not a whole checkpoint")
        if any(k.startswith(("down_blocks.", "conv_in.", "text_model.")) for k in keys):
            raise _refuse(path, "one component in diffusers' layout (unet/, vae/ or text_encoder/ weights), not a "
                                "whole checkpoint: register the model's diffusers directory instead")
        raise _refuse(path, "not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights)")
    if not any(k.startswith(VAE) for k in keys):
        raise _refuse(path, "no VAE weights (first_stage_model.*): a UNet-only file cannot be loaded as a pipeline")
    group, text = _text_group(keys, path)
    to_k = [info.shape for k, info in header.tensors.items() if k.startswith(UNET) and k.endswith(".attn2.to_k.weight")]
    conv_in = header.tensors.get(UNET + "input_blocks.0.0.weight")
    if not to_k or conv_in is None or len(conv_in.shape) != 4:
        raise _refuse(path, "not a Stable Diffusion checkpoint (its UNet has no cross-attention or no input layer)")
    blocks = {m.group(1) for k in keys if (m := _BLOCK_RE.match(k))}
    signature = Signature(to_k[0][-1], len(blocks), conv_in.shape[1])
    arch = _match(group, signature, path, "a single-file checkpoint")
    return Checkpoint(SINGLE_FILE, arch, f"{text}, {signature.describe()}")


# -- diffusers directories ------------------------------------------------------------------------
def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _depths(value, layers: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * layers


def config_signature(config: dict) -> Signature:
    """A diffusers UNet2DConditionModel config's signature, counted as diffusers builds it."""
    down, up = config["down_block_types"], config["up_block_types"]
    layers = _per_level(config.get("layers_per_block", 2), len(down))
    depth = _per_level(config.get("transformer_layers_per_block", 1), len(down))
    blocks = sum(sum(_depths(depth[i], layers[i])) for i, kind in enumerate(down) if kind.startswith("CrossAttn"))
    if (config.get("mid_block_type") or "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        blocks += sum(_depths(depth[-1], 1))
    up_depth = config.get("reverse_transformer_layers_per_block") or list(reversed(depth))
    up_layers = list(reversed(layers))
    blocks += sum(sum(_depths(up_depth[i], up_layers[i] + 1)) for i, kind in enumerate(up)
                  if kind.startswith("CrossAttn"))
    width = config.get("cross_attention_dim", 1280)
    return Signature(width if isinstance(width, int) else width[0], blocks, config.get("in_channels", 4))


def inspect_directory(path: Path) -> Checkpoint:
    """A diffusers directory's arch from model_index.json and unet/config.json; a directory
    without them is taken as it is (its weights may arrive later; a worker says what is missing)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
        unet = json.loads((path / "unet" / "config.json").read_text())
    except FileNotFoundError:
        return Checkpoint(DIFFUSERS, None)
    except (OSError, ValueError) as exc:
        raise _refuse(str(path), f"unreadable diffusers config ({exc})") from None
    group = _PIPELINES.get(index.get("_class_name"))
    if group is None:
        raise _refuse(str(path), f"a {index.get('_class_name')} directory: the farm runs StableDiffusionPipeline "
                                 "and StableDiffusionXLPipeline models")
    signature = config_signature(unet)
    arch = _match(group, signature, str(path), "a diffusers directory")
    return Checkpoint(DIFFUSERS, arch, f"{index['_class_name']}, {signature.describe()}")


def inspect(path: str | Path) -> Checkpoint:
    path = Path(path)
    return inspect_directory(path) if path.is_dir() else inspect_header(read_header(path))


def check_model_source(path: str | Path, *, family: str, arch: str) -> str:
    """The layout of a local model source, after checking it is of ``family`` and ``arch``."""
    found = inspect(path)
    if found.arch is None:
        return found.layout
    if found.family != family:
        raise _refuse(str(path), f"{_label(found.arch)} checkpoint, not {family} ({found.evidence})")
    if found.arch != arch:  # the family is right: LoRAs for --arch would not fit it
        raise _refuse(str(path), f"a {found.arch} checkpoint, not {arch} ({found.evidence}); "
                                 f"register it with --arch {found.arch}")
    return found.layout
