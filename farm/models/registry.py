"""Registering models and adapters: validation of names and sources, pure but for a look into a
local model source (farm.models.checkpoints reads a safetensors header or a directory's configs).

A source is a hub id (``org/name``), a local path (a directory, or one ``.safetensors`` file), or
an ``s3://bucket/key`` URI that workers fetch once into their cache and verify by sha256. Built-in
names are reserved.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from farm.errors import InputError
from farm.models.catalog import (
    ADAPTER_KINDS,
    ARCHS,
    BUILTIN_ADAPTERS,
    BUILTIN_EMBEDDINGS,
    BUILTIN_MODELS,
    FAMILIES,
    FLOW_FAMILIES,
    MODEL_KINDS,
    NATIVE_SIZE,
    SIZE_MULTIPLE,
    TINY_FLOW_ARCHS,
    AdapterEntry,
    EmbeddingEntry,
    ModelEntry,
)
from farm.models.checkpoints import DIFFUSERS, SINGLE_FILE, check_model_source
from farm.models.embeddings import check_token, inspect_embedding
from farm.models.loras import inspect_lora
from farm.models.names import check_name
from farm.models.recipes import RECIPES

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
    multiple = SIZE_MULTIPLE.get(family, 8)  # flux, sd3: 16
    if not 64 <= size <= 2048 or size % multiple:
        raise InputError("native-size", f"{size} must be a multiple of {multiple} within 64..2048")
    source = check_source(source, cwd=cwd)
    return ModelEntry(name=name, source=source, family=family, arch=arch, native_size=size, kind=kind, builtin=False,
                      revision=_optional(REVISION_RE, "revision", revision, "revision"),
                      layout=model_layout(source, family=family, arch=arch))


def model_layout(source: str, *, family: str, arch: str) -> str:
    """A local source is looked into now (a safetensors header, or a directory's configs) and
    refused if it is not of ``family`` and ``arch``; an s3:// one is looked into once fetched (the
    CLI fetches it at add); a hub id is a diffusers repository."""
    if source.startswith("s3://"):
        return SINGLE_FILE if source.endswith(".safetensors") else DIFFUSERS
    if Path(source).is_absolute():  # check_source made every local path absolute
        return check_model_source(source, family=family, arch=arch)
    return DIFFUSERS


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
        arch_family = BUILTIN_MODELS[family].family if family in BUILTIN_MODELS else family  # a tiny arch: its model's
        served = sorted({f for r in RECIPES.values() if r.accelerator == recipe for f in r.families})
        if arch_family not in served:  # e.g. an lcm-lora (the default) accelerator for a flux arch
            raise InputError("recipe", f"{recipe} accelerators are for {', '.join(served)} models, not {family}; "
                                       "name the recipe it serves with --recipe")
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


def embedding_entry(name: str, *, source: str, family: str, token: str | None = None, cwd: Path) -> EmbeddingEntry:
    """A textual-inversion embedding for ``family`` (an arch); prompts use it by ``token``
    (default: its name, as A1111 does). Its file is read and checked by ``with_file``."""
    _check_new_name(name, BUILTIN_EMBEDDINGS, "embedding")
    if family not in ARCHS:
        raise InputError("family", f"{family!r} is not a family ({', '.join(ARCHS)})")
    if family in FLOW_FAMILIES + TINY_FLOW_ARCHS:  # engine.embeddings loads into CLIP-only pipelines
        raise InputError("family", f"textual-inversion embeddings are for sd15, sdxl and ssd-1b models; {family} "
                                   "models (T5 + CLIP) take none")
    token = check_token(name if token is None else token)
    source = check_source(source, cwd=cwd)
    if not source.endswith(".safetensors"):
        raise InputError("source", f"{source}: an embedding is registered from its .safetensors file (a local "
                                   "path or s3://)")
    return EmbeddingEntry(name=name, source=source, arch=family, token=token, builtin=False)


# -- the files behind entries: users' own LoRAs, embeddings and single-file models ----------------
DEFAULT_LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers looks for in a directory


def weight_file(entry, root: str | Path | None = None) -> Path | None:
    """The one weight file of an entry under ``root`` (default: its local source), or None when
    there is none to look into here (a hub id, a diffusers model directory)."""
    base = Path(root if root is not None else entry.source)
    if not base.is_absolute():
        return None  # a hub id: diffusers resolves the file on the worker
    if base.is_file():
        return base
    if isinstance(entry, ModelEntry) or not base.is_dir():
        return None  # a diffusers model directory has many files; farm.models.checkpoints looked into it
    weight_name = getattr(entry, "weight_name", None)
    if weight_name:
        path = base / weight_name
        if not path.is_file():
            raise InputError("weight-name", f"{path}: no such file")
        return path
    if (base / DEFAULT_LORA_FILE).is_file():
        return base / DEFAULT_LORA_FILE
    candidates = sorted(base.glob("*.safetensors"))
    if len(candidates) == 1:  # as diffusers picks it
        return candidates[0]
    raise InputError("weight-name", f"{base}: {len(candidates)} .safetensors files; name the LoRA's with --weight-name")


def with_file(entry, path: str | Path):
    """``entry`` completed from its weight file: read without torch, checked against the entry's
    arch (InputError naming the file otherwise) and hashed."""
    from farm.models.weights import sha256_file

    if isinstance(entry, AdapterEntry):
        lora = inspect_lora(path, entry.arch)
        return replace(entry, sha256=lora.sha256, layout=lora.layout, addnet_sha256=lora.addnet_sha256)
    if isinstance(entry, EmbeddingEntry):
        embedding = inspect_embedding(path, entry.arch)
        return replace(entry, sha256=embedding.sha256, vectors=embedding.vectors)
    return replace(entry, sha256=sha256_file(path))  # a model: farm.models.checkpoints checked it in model_entry
