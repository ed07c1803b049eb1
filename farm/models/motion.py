"""Registering motion modules (issue 27): names, sources, and a look into local files without torch.

A motion module (AnimateDiff's temporal layers, which diffusers' ``MotionAdapter`` holds) is a
hub id, a diffusers directory (``config.json`` + weights), one ``.safetensors`` file (diffusers
keys, as AnimateDiff-Lightning publishes them, or the original AnimateDiff keys), or an ``s3://``
URI of either. A local one is looked into at ``add``: its temporal layers must be as wide, block
by block, as ``--family``'s UNet, or nothing is registered (an SDXL module on an SD1.5 model
fails inside the pipeline's first call, far from the user who registered it).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from farm.errors import InputError
from farm.models.catalog import BUILTIN_MOTION_ADAPTERS, MOTION_ARCHS, MotionAdapterEntry
from farm.models.weights import read_diffusers_config

# the UNet's down-block widths per arch: a motion module has one temporal layer stack per block
MOTION_BLOCKS = {"sd15": (320, 640, 1280, 1280), "sdxl": (320, 640, 1280), "tiny-sd": (32, 64)}
MOTION_RECIPES = ("animatediff-lightning",)  # a module that runs only with its own recipe
LIGHTNING_STEPS = (1, 2, 4, 8)  # AnimateDiff-Lightning's files
BETA_SCHEDULES = ("linear", "scaled_linear")
# "down_blocks.I.motion_modules.0.norm.weight" (diffusers) or "...0.temporal_transformer.norm.weight"
_NORM_RE = re.compile(r"^down_blocks\.(\d+)\.motion_modules\.0\.(?:temporal_transformer\.)?norm\.weight$")


def motion_entry(name: str, *, source: str, family: str, weight_name: str | None = None,
                 recipe: str | None = None, steps: int | None = None, beta_schedule: str | None = "linear",
                 revision: str | None = None, cwd: Path) -> MotionAdapterEntry:
    """A motion module for ``family``; a local source is checked by ``with_file``."""
    from farm.models.registry import REVISION_RE, WEIGHT_NAME_RE, _check_new_name, _optional, check_source

    _check_new_name(name, BUILTIN_MOTION_ADAPTERS, "motion module")
    if family not in MOTION_ARCHS:
        raise InputError("family", f"{family!r} is not a family motion modules fit ({', '.join(MOTION_ARCHS)})")
    if recipe is not None and recipe not in MOTION_RECIPES:
        raise InputError("recipe", f"{recipe!r}: a motion module serves {', '.join(MOTION_RECIPES)} or any LCM "
                                   "recipe (give no --recipe)")
    if recipe is not None and steps not in LIGHTNING_STEPS:
        raise InputError("steps", f"an {recipe} module is distilled for {', '.join(map(str, LIGHTNING_STEPS))} "
                                  "steps: give the step count of its file with --steps")
    if recipe is None and steps is not None:
        raise InputError("steps", "--steps is the step count of an --recipe animatediff-lightning module")
    if beta_schedule is not None and beta_schedule not in BETA_SCHEDULES:
        raise InputError("beta_schedule", f"{beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")
    source = check_source(source, cwd=cwd)
    if weight_name is not None and (source.endswith(".safetensors") or not WEIGHT_NAME_RE.match(weight_name)):
        raise InputError("weight_name", f"{weight_name!r}: a .safetensors file name inside a hub repo or directory")
    return MotionAdapterEntry(name=name, source=source, arch=family, weight_name=weight_name, recipe=recipe,
                              steps=steps, beta_schedule=beta_schedule, builtin=False,
                              revision=_optional(REVISION_RE, "revision", revision, "revision"))


def block_widths(keys_and_shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The widths of a motion module's down blocks, from its weights' names and shapes."""
    widths: dict[int, int] = {}
    for key, shape in keys_and_shapes.items():
        match = _NORM_RE.match(key)
        if match and len(shape) == 1:
            widths[int(match.group(1))] = int(shape[0])
    return tuple(widths[i] for i in sorted(widths))


def _check_widths(what: str, widths: tuple[int, ...], arch: str) -> None:
    if not widths:
        raise InputError("source", f"{what}: holds no motion module (no down_blocks.*.motion_modules weights)")
    wanted = MOTION_BLOCKS[arch]
    if widths != wanted:
        fits = [a for a, blocks in MOTION_BLOCKS.items() if blocks == widths]
        raise InputError("family", f"{what}: a motion module for {' or '.join(fits) if fits else 'another'} models "
                                   f"(blocks {'/'.join(map(str, widths))} wide); {arch} UNets' are "
                                   f"{'/'.join(map(str, wanted))}")


def inspect_directory(path: Path, arch: str) -> None:
    config = read_diffusers_config(path, "MotionAdapter", "motion adapter")
    _check_widths(str(path), tuple(config.get("block_out_channels") or ()), arch)


def inspect_file(path: Path, arch: str) -> str:
    """Check a single-file motion module's header against ``arch``; its sha256."""
    from farm.models.weights import read_header, sha256_file

    header = read_header(path)
    _check_widths(str(path), block_widths({k: tuple(header.tensors[k].shape) for k in header.keys()}), arch)
    return sha256_file(path)


def with_file(entry: MotionAdapterEntry, path: str | Path, sha256: str | None = None) -> MotionAdapterEntry:
    """``entry`` checked against its local file or directory (fetched from s3:// or the user's own)."""
    path = Path(path)
    if path.is_dir():
        if entry.weight_name:
            return with_file(replace(entry), path / entry.weight_name, sha256)
        inspect_directory(path, entry.arch)
        return replace(entry, sha256=sha256)
    digest = inspect_file(path, entry.arch)
    return replace(entry, sha256=sha256 or digest)
