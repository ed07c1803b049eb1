"""LoRA files as the ecosystem shares them, checked without torch.

Two layouts are in use:

- **kohya**: what Kohya's sd-scripts, A1111 and Civitai use. One module per key prefix,
  ``lora_unet_<module>`` / ``lora_te_<module>`` (SDXL: ``lora_te1_``/``lora_te2_``) with ``.`` spelt
  ``_``, and tensors ``.lora_down.weight`` [rank, in], ``.lora_up.weight`` [out, rank] and ``.alpha``
  (the update is scaled by alpha/rank). UNet modules are spelt with diffusers names
  (``down_blocks_1_attentions_0_proj_in``, Kohya's SD1.x files) or original LDM/SGM names
  (``input_blocks_4_1_proj_in``, Kohya's SDXL files and A1111 extractions).
- **diffusers**: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (peft), or the older
  ``.lora.down.weight`` / ``.processor.to_q_lora.down.weight`` / ``.lora_linear_layer.`` spellings.

``inspect_lora`` reads a file's header and checks every module against the layers of the arch it
is registered for (``farm.models.layers``), names and widths, so a LoRA for another arch (or a file that
is no LoRA) is refused at ``add`` with one line naming the file. The worker loads both layouts with
diffusers' ``load_lora_weights``, which converts Kohya files itself; ``kohya_respelling`` only
renames UNet modules into the spelling diffusers' converter maps right for the pipeline at hand
(its SD1.5 path does not map original names at all, its SDXL path does not map diffusers-spelled
``add_embedding``).

FLUX and SD3 LoRAs adapt the ``transformer`` (``transformer.<module>.lora_A``) and CLIP text
encoders; Kohya's FLUX files name Black Forest Labs' layers (``lora_unet_double_blocks_0_img_attn_qkv``,
q, k and v fused), which diffusers converts. diffusers converts no Kohya SD3 file: those are refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from farm.errors import InputError
from farm.models.layers import (
    TEXT_ENCODERS,
    TRANSFORMER_CONFIGS,
    UNET_CONFIGS,
    Layer,
    clip_layers,
    flux_original_layers,
    original_names,
    transformer_layers,
    unet_layers,
)
from farm.models.weights import addnet_sha256, read_header, sha256_file

LAYOUTS = ("kohya", "diffusers")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
KOHYA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
# LyCORIS and other networks that load_lora_weights cannot apply: named, so the refusal says what it is
OTHER_NETWORKS = {"hada_": "LoHa (LyCORIS)", "lokr_": "LoKr (LyCORIS)", "dora_scale": "DoRA", "oft_": "OFT",
                  "diff": "full-weight difference", "w_norm": "norm-layer", "b_norm": "norm-layer"}
_DIFFUSERS_SUFFIXES = (
    (re.compile(r"\.lora_([AB])\.weight$"), lambda m: "down" if m.group(1) == "A" else "up"),
    (re.compile(r"\.lora(?:_linear_layer)?\.(down|up)\.weight$"), lambda m: m.group(1)),
)
_ATTENTION_PROCESSOR = re.compile(r"\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_OLD_TEXT_ATTENTION = re.compile(r"\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LoraFile:
    path: str
    layout: str  # "kohya" or "diffusers"
    modules: int  # layers it adapts
    sha256: str  # of the whole file: what the registry keys files by
    addnet_sha256: str  # what A1111 writes as ``Lora hashes`` (Kohya's sshs_model_hash, or the tensor bytes')


def _refuse(path, what: str) -> InputError:
    return InputError("source", f"{os.fspath(path)}: {what}")


def arch_layers(arch: str) -> dict[tuple[str, str], Layer]:
    """(component, module) -> Layer for every layer a LoRA of ``arch`` may adapt (FLUX, SD3: the
    transformer's instead of the UNet's)."""
    if arch in TRANSFORMER_CONFIGS:
        layers = {("transformer", name): layer for name, layer in transformer_layers(arch).items()}
    else:
        layers = {("unet", name): layer for name, layer in unet_layers(UNET_CONFIGS[arch]).items()}
    for component, config in TEXT_ENCODERS[arch]:
        layers.update({(component, name): layer for name, layer in clip_layers(config).items()})
    return layers


def _flat(name: str) -> str:
    return name.replace(".", "_")


def kohya_names(arch: str) -> dict[str, tuple[str, str]]:
    """Kohya module key (``lora_unet_input_blocks_1_0_emb_layers_1``) -> (component, module), in
    both UNet spellings."""
    names: dict[str, tuple[str, str]] = {}
    if arch in TRANSFORMER_CONFIGS:  # FLUX: Black Forest Labs' names (farm.models.layers.flux_original_layers)
        for name in flux_original_layers(arch):
            names["lora_unet_" + _flat(name)] = ("transformer", name)
        for name in clip_layers(dict(TEXT_ENCODERS[arch])["text_encoder"]):
            for prefix in ("lora_te_", "lora_te1_"):
                names[prefix + _flat(name)] = ("text_encoder", name)
        return names
    config = UNET_CONFIGS[arch]
    original = original_names(config)
    for name in unet_layers(config):
        names["lora_unet_" + _flat(name)] = ("unet", name)
        if name in original:
            names["lora_unet_" + _flat(original[name])] = ("unet", name)
    for component, text_config in TEXT_ENCODERS[arch]:
        prefixes = ("lora_te_", "lora_te1_") if component == "text_encoder" else ("lora_te2_",)
        for name in clip_layers(text_config):
            for prefix in prefixes:
                names[prefix + _flat(name)] = (component, name)
    return names


def _other_network(key: str) -> str | None:
    last = key.rsplit(".", 1)[-1]  # LyCORIS and friends name their tensors by the key's last part
    return next((what for marker, what in OTHER_NETWORKS.items() if last.startswith(marker)), None)


def _kohya_modules(path, keys: list[str]) -> dict[str, dict[str, str]]:
    """module prefix -> {"down"|"up"|"alpha": key}."""
    modules: dict[str, dict[str, str]] = {}
    for key in keys:
        suffix = next((s for s in KOHYA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            what = _other_network(key)
            raise _refuse(path, f"{what} layers ({key}) are not supported; only LoRA (lora_down/lora_up)" if what
                          else f"unexpected key {key} in a Kohya LoRA (lora_down/lora_up/alpha)")
        modules.setdefault(key[: -len(suffix)], {})[KOHYA_SUFFIXES[suffix]] = key
    return modules


def _diffusers_module(key: str) -> tuple[str, str, str] | None:
    """(component, module, "down"|"up") of a diffusers/peft LoRA key, or None."""
    component, _, rest = key.partition(".")
    if component not in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        component, rest = "unet", key  # attention-processor files without a prefix
    processor = _ATTENTION_PROCESSOR.search(rest)
    if processor:
        proj = "to_out.0" if processor.group(1) == "out" else f"to_{processor.group(1)}"
        return component, rest[: processor.start()] + "." + proj, processor.group(2)
    old_text = _OLD_TEXT_ATTENTION.search(rest) if component.startswith("text_encoder") else None
    if old_text:
        return component, rest[: old_text.start()] + f".{old_text.group(1)}_proj", old_text.group(2)
    for pattern, part in _DIFFUSERS_SUFFIXES:
        match = pattern.search(rest)
        if match:
            module = rest[: match.start()]
            if component.startswith("text_encoder") and not module.startswith(("text_model.", "text_projection")):
                module = "text_model." + module  # transformers 5 dropped the text_model level
            return component, module, part(match)
    return None


def layout_of(path, keys: list[str]) -> str:
    kohya = [k for k in keys if k.startswith(tuple(KOHYA_PREFIXES))]
    if kohya and len(kohya) == len(keys):
        return "kohya"
    if kohya:
        other = next(k for k in keys if not k.startswith(tuple(KOHYA_PREFIXES)))
        raise _refuse(path, f"mixes Kohya keys ({kohya[0]}) with others ({other})")
    if any(_diffusers_module(k) for k in keys):
        return "diffusers"
    what = next((w for k in keys if (w := _other_network(k))), None)
    raise _refuse(path, f"{what} files are not supported; only LoRA" if what else
                  f"not a LoRA: no lora_down/lora_up (Kohya) or lora_A/lora_B (diffusers) keys (first key: {keys[0]})")


def _check_shapes(layer: Layer, down: tuple[int, ...], up: tuple[int, ...]) -> str | None:
    """Why a LoRA pair does not fit ``layer``, or None."""
    dims = 2 if layer.kind == "linear" else 4
    if len(down) != dims or len(up) != dims:
        return f"a {len(down)}-d LoRA on a {layer.kind} layer"
    if down[1] != layer.fan_in or up[0] != layer.fan_out or down[0] != up[1]:
        return f"{down[1]}->{up[0]} wide (rank {down[0]}), the layer is {layer.fan_in}->{layer.fan_out}"
    return None


def inspect_lora(path: str | os.PathLike, arch: str) -> LoraFile:
    """Read and check a LoRA file for ``arch``: ``InputError`` naming the file for anything that
    does not load as a LoRA of that arch."""
    header = read_header(path)
    keys = header.keys()
    layout = layout_of(path, keys)
    layers = arch_layers(arch)
    pairs: dict[str, tuple[tuple[str, str] | None, dict[str, str]]] = {}  # shown name -> (layer, parts)
    if layout == "kohya":
        if arch in TRANSFORMER_CONFIGS:
            if TRANSFORMER_CONFIGS[arch][0] != "flux":
                raise _refuse(path, f"a Kohya-layout LoRA for {arch}: diffusers converts Kohya LoRAs of FLUX only; "
                                    "use the diffusers/peft layout (transformer.<module>.lora_A/lora_B)")
            layers.update({("transformer", n): layer for n, layer in flux_original_layers(arch).items()})
        names = kohya_names(arch)
        for prefix, parts in _kohya_modules(path, keys).items():
            pairs[prefix] = (names.get(prefix), parts)
    else:
        for key in keys:
            found = _diffusers_module(key)
            if found is None:
                if key.endswith(".alpha") or "lora_magnitude_vector" in key:
                    continue  # alphas and DoRA magnitudes ride along with their module's pair
                raise _refuse(path, f"unexpected key {key} in a diffusers LoRA")
            component, module, part = found
            shown = f"{component}.{module}"
            pairs.setdefault(shown, ((component, module), {}))[1][part] = key
    problems: list[str] = []
    for shown, (target, parts) in pairs.items():
        if "down" not in parts or "up" not in parts:
            raise _refuse(path, f"{shown} has no {'lora_up' if 'down' in parts else 'lora_down'} weight")
        layer = layers.get(target) if target else None
        if layer is None:
            problems.append(f"{shown} is not a layer of {arch} models")
            continue
        reason = _check_shapes(layer, header.tensors[parts["down"]].shape, header.tensors[parts["up"]].shape)
        if reason:
            problems.append(f"{shown} is {reason}")
    if problems:
        fit = (f"none of its {len(pairs)} layers fit" if len(problems) == len(pairs)
               else f"{len(problems)} of its {len(pairs)} layers do not fit")
        raise _refuse(path, f"{fit} {arch} models ({problems[0]}): a LoRA for another architecture? (--family)")
    meta_hash = header.metadata.get("sshs_model_hash", "").lower()
    return LoraFile(str(path), layout, len(pairs), sha256_file(path),
                    meta_hash if SHA256_RE.match(meta_hash) else addnet_sha256(path))


def kohya_respelling(keys, unet_config: dict, *, original: bool) -> dict[str, str]:
    """Kohya key -> the same key with its UNet module spelt in the original (``original=True``) or
    the diffusers spelling, for the keys that change. ``unet_config``: the pipeline's UNet config."""
    try:
        names = original_names(unet_config)
    except (KeyError, TypeError, ValueError):  # a UNet this module cannot describe: leave its keys alone
        return {}
    to_original = {"lora_unet_" + _flat(d): "lora_unet_" + _flat(o) for d, o in names.items()}
    wanted = to_original if original else {o: d for d, o in to_original.items()}
    respelt = {}
    for key in keys:
        prefix, dot, suffix = key.partition(".")
        if prefix in wanted:
            respelt[key] = wanted[prefix] + dot + suffix
    return respelt
