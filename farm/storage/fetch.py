"""Fetching ``s3://`` model and adapter sources into the local cache, once, verified by sha256.

A source that names one ``.safetensors`` object is fetched as that file; any other key is a
prefix (a diffusers model directory) fetched whole. Its digest is the file's sha256, or for a
directory the sha256 of its manifest (``relative/path sha256`` lines, sorted). The registry records
the digest when the source is added; a worker that fetches it later must get the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from farm.errors import InfrastructureError, InputError, NotFound

MARKER = ".farm-fetched.json"


@dataclass(frozen=True)
class Fetched:
    path: Path  # the file, or the directory
    sha256: str
    single_file: bool
    downloaded: bool  # False: it was already in the cache


def manifest_digest(files: dict[str, str]) -> str:
    lines = "".join(f"{rel} {digest}\n" for rel, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def safe_relative(rel: str) -> str:
    """A key's path below its prefix, refused if it could land outside the cache directory."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(p in ("..", ".", "") for p in rel.split("/")) or "\\" in rel:
        raise InputError("source", f"object {rel!r} would escape the cache directory")
    return rel


def _read_marker(target: Path) -> dict | None:
    marker = (target.parent / (target.name + MARKER)) if target.is_file() else target / MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def fetch_s3(source: str, cache_dir: Path, *, name: str, expected_sha256: str | None = None,
             endpoint_url: str | None = None) -> Fetched:
    from farm.models.names import check_name
    from farm.storage.s3 import S3Store

    check_name("name", name)
    parsed = urlparse(source)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    single = key.endswith(".safetensors")
    root = Path(cache_dir) / "s3"
    target = root / name / (PurePosixPath(key).name if single else "")
    target = target if single else root / name
    marker = _read_marker(target) if target.exists() else None
    if marker and marker.get("source") == source and (expected_sha256 in (None, marker.get("sha256"))):
        return Fetched(target, marker["sha256"], single, downloaded=False)

    store = S3Store(f"s3://{bucket}", endpoint_url=endpoint_url)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        if single:
            data = store.get_raw(key)
            digest = hashlib.sha256(data).hexdigest()
            (staging / target.name).write_bytes(data)
        else:
            prefix = key.rstrip("/") + "/"
            keys = [k for k in store.list_keys(prefix) if not k.endswith("/")]
            if not keys:
                raise NotFound(f"nothing under {source}")
            files = {}
            for full_key in keys:
                rel = safe_relative(full_key[len(prefix):])
                data = store.get_raw(full_key)
                destination = staging / rel
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
                files[rel] = hashlib.sha256(data).hexdigest()
            digest = manifest_digest(files)
        if expected_sha256 and digest != expected_sha256:
            raise InfrastructureError(f"{source}: sha256 {digest[:16]}... does not match the registered "
                                      f"{expected_sha256[:16]}...; the object changed since it was added")
        record = json.dumps({"source": source, "sha256": digest})
        if single:
            (staging / (target.name + MARKER)).write_text(record)
        else:
            (staging / MARKER).write_text(record)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Fetched(target, digest, single, downloaded=True)
