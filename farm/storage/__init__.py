"""Object storage for artifacts: ``file://`` (default) or ``s3://bucket/prefix`` through boto3.

Keys are deterministic per job, so a re-run overwrites rather than duplicates.
"""

from __future__ import annotations

import re
from typing import Protocol
from urllib.parse import urlparse

from farm.errors import ConfigError, InputError

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,511}$")


class Store(Protocol):
    url: str

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> None: ...

    def put_file(self, key: str, path, content_type: str, metadata: dict[str, str] | None = None) -> None:
        """The same as ``put`` for a file on disk, streamed: it never sits whole in memory."""
        ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's root or confuse S3."""
    if not _KEY_RE.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise InputError("key", f"unsafe object key {key!r}")
    return key


def artifact_key(batch_id: str, index: int, seed: int, ext: str = "png") -> str:
    """Deterministic object key of one job's image."""
    return check_key(f"batches/{batch_id}/{index:05d}-{seed}.{ext}")


def open_store(url: str, *, s3_endpoint_url: str | None = None) -> Store:
    scheme = urlparse(url).scheme
    if scheme == "file":
        from farm.storage.local import LocalStore

        return LocalStore(url)
    if scheme == "s3":
        from farm.storage.s3 import S3Store

        return S3Store(url, endpoint_url=s3_endpoint_url)
    raise ConfigError("FARM_STORE_URL", f"unsupported store {url!r} (use file://... or s3://bucket/prefix)")


def object_uri(store: Store, key: str) -> str:
    """Where an object of ``store`` can be loaded from by name: a local path for a ``file://``
    store, ``s3://bucket/prefix/key`` for S3 (what a registry entry's source holds)."""
    from farm.storage.local import LocalStore
    from farm.storage.s3 import S3Store

    if isinstance(store, LocalStore):
        return str(store.path(key))
    if isinstance(store, S3Store):
        return f"s3://{store.bucket}/{store.prefix + '/' if store.prefix else ''}{check_key(key)}"
    raise TypeError(f"no URI for objects of {type(store).__name__}")
