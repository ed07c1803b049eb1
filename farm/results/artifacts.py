"""Reading a batch's images (and the input images its jobs started from) out of the store,
verified against the ledger's sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from farm.errors import InfrastructureError
from farm.ledger import Ledger
from farm.results.gallery import output_name
from farm.storage import open_store


class ArtifactReader:
    """Reads artifacts from whichever store each was written to, checking its sha256."""

    def __init__(self, s3_endpoint_url: str | None = None):
        self.s3_endpoint_url = s3_endpoint_url
        self.stores: dict[str, object] = {}

    def read(self, store_url: str, key: str, sha256: str) -> bytes:
        store = self.stores.get(store_url)
        if store is None:
            store = self.stores[store_url] = open_store(store_url, s3_endpoint_url=self.s3_endpoint_url)
        data = store.get(key)
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise InfrastructureError(f"{key}: stored object does not match the ledger "
                                      f"(sha256 {digest[:12]} != {sha256[:12]})")
        return data


def fetch_batch(ledger: Ledger, batch_id: str, out_dir: Path, *,
                s3_endpoint_url: str | None = None) -> list[tuple[int, Path]]:
    """Copy every stored image of a batch into ``out_dir``; (job id, path) in job order."""
    rows = ledger.artifacts(batch_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = ArtifactReader(s3_endpoint_url)
    paths = []
    for job, artifact in rows:
        data = reader.read(artifact.store_url, artifact.key, artifact.sha256)
        target = out_dir / output_name(job.index, job.spec.seed, artifact.key)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=out_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
        paths.append((job.id, target))
    return paths


def read_input(store_url: str, sha256: str, s3_endpoint_url: str | None = None) -> bytes:
    """An input image from the farm's store (``inputs/<sha256>.png``), checked against its name."""
    from farm.jobs.kinds import input_key

    data = open_store(store_url, s3_endpoint_url=s3_endpoint_url).get(input_key(sha256))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InfrastructureError(f"{input_key(sha256)}: stored input does not match its name")
    return data


def source_cells(cells: list, store_url: str, s3_endpoint_url: str | None = None) -> list[tuple[str, str, bytes]]:
    """Contact-sheet cells of the images a sheet's rows started from (issue 13): a "source" column
    (the init image; a ControlNet's control image) beside each row whose jobs share one."""
    per_row: dict[str, set] = {}
    for _, row, job in cells:
        per_row.setdefault(row, set()).add(job.get("init_image") or job.get("control_image"))
    out = []
    for row, sources in per_row.items():
        if len(sources) == 1 and None not in sources:
            out.append(("source", row, read_input(store_url, next(iter(sources)), s3_endpoint_url)))
    return out
