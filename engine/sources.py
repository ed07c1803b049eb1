"""Where weights come from: ``builtin:NAME``, a local directory or file, or a hub id.

Returns what ``from_pretrained`` / ``load_lora_weights`` take. Built-in tiny models and LoRAs are
built into the model cache on first use and then loaded like any local directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.errors import InputError
from farm.models.catalog import tiny_build

WEIGHT_SUFFIXES = (".safetensors",)  # never pickles: a .ckpt or .bin can run code on load


@dataclass(frozen=True)
class Location:
    path: str  # local path or hub id
    single_file: bool = False
    is_hub: bool = False


def resolve(source: str, cache_dir: Path, *, name: str | None = None, sha256: str | None = None,
            s3_endpoint_url: str | None = None) -> Location:
    """Where to load ``source`` from. ``name`` and ``sha256`` come from the registry entry: an
    s3:// source is fetched once into the cache under its name and must match the digest."""
    if source.startswith("builtin:"):
        return Location(str(_build(source[len("builtin:"):], cache_dir)))
    if source.startswith("s3://"):
        from farm.storage.fetch import fetch_s3

        if not name:
            raise InputError("source", f"{source}: s3:// sources are registered by name (farm models add)")
        fetched = fetch_s3(source, cache_dir, name=name, expected_sha256=sha256, endpoint_url=s3_endpoint_url)
        return Location(str(fetched.path), single_file=fetched.single_file)
    path = Path(source).expanduser()
    if source.startswith(("/", "./", "../", "~")) or path.exists():
        if path.is_dir():
            return Location(str(path))
        if path.is_file():
            if path.suffix not in WEIGHT_SUFFIXES:
                raise InputError("source", f"{source}: only .safetensors weight files are loaded")
            return Location(str(path), single_file=True)
        raise InputError("source", f"{source}: no such file or directory")
    if source.count("/") == 1 and all(part.strip() for part in source.split("/")):
        return Location(source, is_hub=True)
    raise InputError("source", f"{source!r} is neither a local path, a hub id (org/name) nor builtin:NAME")


def _build(name: str, cache_dir: Path) -> Path:
    from engine.pipelines import tiny, tiny_flow

    build = tiny_build(name)
    if build is None:
        raise InputError("source", f"no built-in model or adapter named {name!r}")
    what, base, seed = build
    builtin_dir = Path(cache_dir) / "builtin"
    if what == "controlnet":  # issue 13: copied from the tiny model's freshly loaded UNet
        from engine.pipelines import tiny_controlnet

        return tiny_controlnet.ensure_tiny_controlnet(base, name, builtin_dir, seed=seed)
    if what == "motion":  # issue 27: AnimateDiff's temporal layers, sized for the tiny UNet
        from engine.pipelines import tiny_motion

        return tiny_motion.ensure_tiny_motion(name, builtin_dir, seed=seed)
    # the tiny FLUX / SD3 models, their LoRAs and decoders have their own builders (base: a model or an arch)
    builders = tiny_flow if base in tiny_flow.BUILDERS else tiny
    if what == "model":
        return builders.ensure_tiny_model(base, builtin_dir)
    if what == "decoder":
        return builders.ensure_tiny_taesd(name, builtin_dir, seed=seed)
    return builders.ensure_tiny_lora(base, name, builtin_dir, seed=seed)
