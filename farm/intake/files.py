"""Looking into a model file before it is registered (``farm models|adapters|embeddings|controlnets
add``; later the API's uploads): an ``s3://`` source is fetched once into this machine's cache to
record its sha256; a file (local, or fetched) is read and checked against the entry's family and
arch, and hashed. Hub ids are not looked into (workers fetch them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from farm.config import Config
from farm.errors import InputError
from farm.models.catalog import ControlNetEntry, ModelEntry, MotionAdapterEntry
from farm.models.checkpoints import check_model_source
from farm.models.controlnets import with_file as controlnet_with_file
from farm.models.motion import with_file as motion_with_file
from farm.models.registry import weight_file, with_file
from farm.storage.fetch import fetch_s3


def _named_by_source(exc: InputError, root: Path, source: str) -> InputError:
    """The error named by the entry's source, not by where this machine cached it."""
    return InputError(None, str(exc).replace(str(root), source))


def checked_entry(entry, config: Config):
    """``entry`` with what its weight file says (sha256, layout), or an ``InputError`` naming what
    does not fit; nothing is registered here."""
    root = None
    if entry.source.startswith("s3://"):
        fetched = fetch_s3(entry.source, config.model_cache, name=entry.name, endpoint_url=config.s3_endpoint_url)
        root = fetched.path
        if isinstance(entry, ModelEntry):  # a checkpoint's keys, or a directory's configs, say its family
            try:
                check_model_source(root, family=entry.family, arch=entry.arch)
            except InputError as exc:
                raise _named_by_source(exc, root, entry.source) from None
        # what a worker's fetch is verified against: the file's sha256, or a directory's manifest
        entry = replace(entry, sha256=fetched.sha256)
    if isinstance(entry, ControlNetEntry):  # issue 13: a directory's config or a file's header
        local = root if root is not None else (Path(entry.source) if Path(entry.source).is_absolute() else None)
        return entry if local is None else controlnet_with_file(entry, local, entry.sha256)
    if isinstance(entry, MotionAdapterEntry):  # issue 27: its temporal layers' widths, block by block
        local = root if root is not None else (Path(entry.source) if Path(entry.source).is_absolute() else None)
        return entry if local is None else motion_with_file(entry, local, entry.sha256)
    path = weight_file(entry, root)
    if path is None:
        return entry
    try:
        checked = with_file(entry, path)
    except InputError as exc:
        if root is None:
            raise
        raise _named_by_source(exc, root, entry.source) from None
    return replace(checked, sha256=entry.sha256) if root is not None else checked
