"""Registering ControlNets (issue 13): names, sources, and a look into local files without torch.

A ControlNet source is a hub id, a diffusers directory (``config.json`` + weights), one
``.safetensors`` file (diffusers keys, or the original LDM keys that A1111 users hold), or an
``s3://`` URI of either. A local one is looked into at ``add``: a directory's config must be a
``ControlNetModel``'s, a file's header must hold a ControlNet's tensors, and either must attend to
text as wide as ``--family``'s UNet (its cross-attention width), or nothing is registered.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from farm.errors import InputError
from farm.models.catalog import BUILTIN_CONTROLNETS, CONTROLNET_ARCHS, ControlNetEntry
from farm.models.weights import read_diffusers_config

DIFFUSERS, SINGLE_FILE = "diffusers", "single-file"
# the text width each UNet arch's cross-attention takes (what a ControlNet of that arch takes too)
CROSS_ATTENTION_DIM = {"sd15": 768, "sdxl": 2048, "ssd-1b": 2048, "tiny-sd": 32, "tiny-sdxl": 96, "tiny-ssd-1b": 96}
CONTROLNET_MARKS = ("controlnet_cond_embedding.", "input_hint_block.", "control_model.input_hint_block.")


def controlnet_entry(name: str, *, source: str, family: str, revision: str | None = None, cwd: Path) -> ControlNetEntry:
    """A ControlNet for ``family`` (one of the UNet archs); a local source is checked by ``with_file``."""
    from farm.models.registry import REVISION_RE, _check_new_name, _optional, check_source

    _check_new_name(name, BUILTIN_CONTROLNETS, "ControlNet")
    if family not in CONTROLNET_ARCHS:
        raise InputError("family", f"{family!r} is not a UNet family a ControlNet fits ({', '.join(CONTROLNET_ARCHS)})")
    source = check_source(source, cwd=cwd)
    layout = SINGLE_FILE if source.endswith(".safetensors") else DIFFUSERS
    return ControlNetEntry(name=name, source=source, arch=family, layout=layout, builtin=False,
                           revision=_optional(REVISION_RE, "revision", revision, "revision"))


def _check_width(what: str, width: int | None, arch: str) -> None:
    wanted = CROSS_ATTENTION_DIM[arch]
    if width is not None and width != wanted:
        raise InputError("family", f"{what} attends to text {width} wide; {arch} models' is {wanted}")


def inspect_directory(path: Path, arch: str) -> None:
    config = read_diffusers_config(path, "ControlNetModel", "ControlNet", class_required=False)
    _check_width(str(path), config.get("cross_attention_dim"), arch)


def inspect_file(path: Path, arch: str) -> str:
    """Check a single-file ControlNet's header against ``arch``; its sha256."""
    from farm.models.weights import read_header, sha256_file

    header = read_header(path)
    keys = header.keys()
    if not any(k.startswith(CONTROLNET_MARKS) for k in keys):
        raise InputError("source", f"{path}: holds no ControlNet (no control-image embedding among its "
                                   f"{len(keys)} tensors)")
    to_k = next((header.tensors[k] for k in keys if k.endswith("attn2.to_k.weight")), None)
    _check_width(str(path), to_k.shape[1] if to_k is not None and len(to_k.shape) == 2 else None, arch)
    return sha256_file(path)


def with_file(entry: ControlNetEntry, path: str | Path, sha256: str | None = None) -> ControlNetEntry:
    """``entry`` checked against its local file or directory (fetched from s3:// or the user's own)."""
    path = Path(path)
    if path.is_dir():
        inspect_directory(path, entry.arch)
        return replace(entry, layout=DIFFUSERS, sha256=sha256)
    digest = inspect_file(path, entry.arch)
    return replace(entry, layout=SINGLE_FILE, sha256=sha256 or digest)
