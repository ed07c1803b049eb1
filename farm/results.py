"""Fetching a batch's images out of the store, verified against the ledger's sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from farm.errors import InfrastructureError
from farm.ledger import Ledger
from farm.storage import open_store


def output_name(index: int, seed: int) -> str:
    return f"{index:05d}-{seed}.png"


def fetch_batch(ledger: Ledger, batch_id: str, out_dir: Path, *, s3_endpoint_url: str | None = None) -> list[Path]:
    """Copy every stored image of a batch into ``out_dir``; return the paths in job order."""
    rows = ledger.artifacts(batch_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    stores: dict[str, object] = {}
    paths = []
    for job, artifact in rows:
        store = stores.get(artifact.store_url)
        if store is None:
            store = stores[artifact.store_url] = open_store(artifact.store_url, s3_endpoint_url=s3_endpoint_url)
        data = store.get(artifact.key)
        digest = hashlib.sha256(data).hexdigest()
        if digest != artifact.sha256:
            raise InfrastructureError(
                f"{artifact.key}: stored object does not match the ledger (sha256 {digest[:12]} != "
                f"{artifact.sha256[:12]})"
            )
        target = out_dir / output_name(job.index, job.seed)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=out_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
        paths.append(target)
    return paths
