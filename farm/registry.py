"""Registering models and adapters: validation of names and sources, pure.

A source is a hub id (``org/name``), a local path (a directory, or one ``.safetensors`` file), or
an ``s3://bucket/key`` URI that workers fetch once into their cache and verify by sha256. Built-in
names are reserved.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from farm.catalog import (
    ADAPTER_KINDS,
    ARCHS,
    BUILTIN_ADAPTERS,
    BUILTIN_MODELS,
    FAMILIES,
    MODEL_KINDS,
    NATIVE_SIZE,
    AdapterEntry,
    ModelEntry,
)
from farm.errors import InputError
from farm.recipes import RECIPES
from farm.spec import check_name

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
WEIGHT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
ACCELERATOR_ROLES = tuple(sorted({r.accelerator for r in RECIPES.values() if r.accelerator}))


def check_source(source: str, *, cwd: Path) -> str:
    """Normalise a source (local paths become absolute) or refuse it with a reason."""
    if not source or len(source) > 1024 or any(ord(c) < 32 for c in source):
        raise InputError("source", "expected a hub id, a local path or an s3:// URI")
    if source.startswith("builtin:"):
        raise InputError("source", "builtin: sources are reserved for the farm's own tiny models")
    if source.startswith("s3://"):
        parsed = urlparse(source)
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise InputError("source", f"{source}: expected s3://BUCKET/KEY")
        if any(part in ("..", ".") for part in key.split("/")):
            raise InputError("source", f"{source}: '..' and '.' are not allowed in keys")
        return source
    if "://" in source:
        raise InputError("source", f"{source}: only s3:// URLs are supported")
    path = Path(source).expanduser()
    looks_local = source.startswith(("/", "./", "../", "~")) or path.exists()
    if looks_local:
        path = (cwd / path).resolve() if not path.is_absolute() else path.resolve()
        if path.is_dir():
            return str(path)
        if path.is_file():
            if path.suffix != ".safetensors":
                raise InputError("source", f"{source}: only .safetensors weight files are loaded (no pickles)")
            return str(path)
        raise InputError("source", f"{source}: no such file or directory")
    if HUB_ID_RE.match(source):
        return source
    raise InputError("source", f"{source!r} is neither a hub id (org/name), a local path nor an s3:// URI")


def _check_new_name(name: str, builtins: dict, what: str) -> str:
    check_name("name", name)
    if name in builtins:
        raise InputError("name", f"{name} is a built-in {what}; pick another name")
    return name


def _optional(pattern: re.Pattern, field: str, value: str | None, hint: str) -> str | None:
    if value is not None and not pattern.match(value):
        raise InputError(field, f"{value!r} is not a valid {hint}")
    return value


def model_entry(name: str, *, source: str, family: str, kind: str = "base", arch: str | None = None,
                revision: str | None = None, native_size: int | None = None, cwd: Path) -> ModelEntry:
    _check_new_name(name, BUILTIN_MODELS, "model")
    if family not in FAMILIES:
        raise InputError("family", f"{family!r} is not a family ({', '.join(FAMILIES)})")
    if kind not in MODEL_KINDS:
        raise InputError("kind", f"{kind!r} is not a model kind ({', '.join(MODEL_KINDS)})")
    arch = arch or family
    if arch not in ARCHS:
        raise InputError("arch", f"{arch!r} is not an architecture ({', '.join(ARCHS)})")
    size = native_size or NATIVE_SIZE[family]
    if not 64 <= size <= 2048 or size % 8:
        raise InputError("native-size", f"{size} must be a multiple of 8 within 64..2048")
    return ModelEntry(name=name, source=check_source(source, cwd=cwd), family=family, arch=arch,
                      native_size=size, kind=kind, builtin=False,
                      revision=_optional(REVISION_RE, "revision", revision, "revision"))


def adapter_entry(name: str, *, source: str, kind: str, family: str, weight_name: str | None = None,
                  recipe: str | None = None, steps: int | None = None, guidance_max: float | None = None,
                  revision: str | None = None, cwd: Path) -> AdapterEntry:
    """``family`` is the architecture the LoRA was trained on (sd15, sdxl, ssd-1b, or a tiny one)."""
    _check_new_name(name, BUILTIN_ADAPTERS, "adapter")
    if kind not in ADAPTER_KINDS:
        raise InputError("kind", f"{kind!r} is not an adapter kind ({', '.join(ADAPTER_KINDS)})")
    if family not in ARCHS:
        raise InputError("family", f"{family!r} is not a family ({', '.join(ARCHS)})")
    if kind == "accelerator":
        recipe = recipe or "lcm-lora"
        if recipe not in ACCELERATOR_ROLES:
            raise InputError("recipe", f"accelerators serve {', '.join(ACCELERATOR_ROLES)}, not {recipe!r}")
        choices = RECIPES[recipe].step_choices
        if choices and steps not in choices:
            raise InputError("steps", f"a {recipe} LoRA needs --steps, one of {', '.join(map(str, choices))}")
        if not choices and steps is not None:
            raise InputError("steps", f"{recipe} LoRAs are not distilled for a step count")
    elif recipe is not None or steps is not None:
        raise InputError("recipe", "style adapters take no --recipe or --steps")
    if guidance_max is not None and not 0 < guidance_max <= 20:
        raise InputError("guidance-max", f"{guidance_max:g} is outside 0..20")
    return AdapterEntry(name=name, source=check_source(source, cwd=cwd), arch=family, kind=kind,
                        weight_name=_optional(WEIGHT_NAME_RE, "weight-name", weight_name,
                                              "weight file name (NAME.safetensors, no directories)"),
                        recipe=recipe if kind == "accelerator" else None, steps=steps, guidance_max=guidance_max,
                        revision=_optional(REVISION_RE, "revision", revision, "revision"), builtin=False)
