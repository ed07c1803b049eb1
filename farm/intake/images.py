"""Reading the images a submission names (issue 13): a local path, an ``s3://bucket/key`` URI or
``job:ID`` (the stored image of an earlier job, read from the store it was written to and checked
against the ledger's sha256). The bytes are read here; decoding and checking is the render
engine's (``engine.inputs``, PIL, imported on purpose: ``farm`` itself never imports PIL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from farm.errors import InputError, NotFound
from farm.jobs.inputs import ReadImage, SourceJob, job_ref
from farm.jobs.kinds import MAX_INPUT_BYTES
from farm.jobs.values import is_sha256
from farm.tenancy.policy import OPERATOR, Policy

if TYPE_CHECKING:
    from farm.results.artifacts import ArtifactReader


class InputReader:
    """Reads and checks input images for one submission (each reference once).

    ``ledger``: a function returning the farm's ledger, or None where there is none yet (a fresh
    farm home, which holds no jobs); called only for ``job:`` references and ``--from-batch``.
    ``policy`` (farm.tenancy.policy): what the submitter may name; a remote tenant's reader refuses
    server paths and sees only its own jobs, batches and uploads. ``store_url``: where uploaded
    inputs (``input:<sha256>``) live."""

    def __init__(self, *, ledger: Callable[[], object] | None = None, s3_endpoint_url: str | None = None,
                 cwd: Path | None = None, policy: Policy = OPERATOR, store_url: str | None = None):
        self._ledger = ledger
        self.policy = policy
        self.store_url = store_url
        self.s3_endpoint_url = s3_endpoint_url
        self.cwd = cwd or Path.cwd()
        self._read: dict[tuple, ReadImage] = {}
        self._jobs: dict[int, object] = {}
        self._artifacts: ArtifactReader | None = None  # opened on the first job: reference

    # -- the ledger's side -----------------------------------------------------------------------
    def ledger(self, field: str, missing: str):
        ledger = self._ledger() if self._ledger is not None else None
        if ledger is None:
            raise InputError(field, f"{missing} (this farm has recorded nothing yet)")
        return ledger

    def job(self, field: str, job_id: int):
        if job_id not in self._jobs:
            [view] = self.ledger(field, f"no job {job_id}").list_jobs(job_id=job_id, tenant=self.policy.scope) \
                or [None]
            if view is None:
                raise InputError(field, f"no job {job_id}")
            self._jobs[job_id] = view
        return self._jobs[job_id]

    def source_job(self, ref: object) -> SourceJob | None:
        """The job a ``job:ID`` init image comes from (None for a file or URI)."""
        job_id = job_ref("init_image", ref) if isinstance(ref, str) else None
        if job_id is None:
            return None
        spec = self.job("init_image", job_id).spec
        return SourceJob(job_id, spec.prompt, spec.negative_prompt, spec.model)

    def batch_sources(self, batch: str) -> list[str]:
        """``job:ID`` of every succeeded image of ``batch``, in job order (``--from-batch``)."""
        if not isinstance(batch, str) or not batch.strip():
            raise InputError("from_batch", "expected a batch id")
        try:
            views = self.ledger("from_batch", f"no batch {batch!r}").list_jobs(batch_id=batch.strip(),
                                                                               tenant=self.policy.scope)
        except NotFound:
            views = []
        if not views:
            raise InputError("from_batch", f"no batch {batch!r}")
        done = [v for v in views if v.state == "succeeded" and v.artifact is not None]
        if not done:
            raise InputError("from_batch", f"batch {batch} has no succeeded image to start from "
                                           f"({len(views)} jobs, none succeeded yet)")
        for view in done:
            self._jobs[view.id] = view
        return [f"job:{v.id}" for v in done]

    # -- bytes ------------------------------------------------------------------------------------
    def read_bytes(self, field: str, ref: str) -> bytes:
        self.policy.check_image(field, ref)
        if ref.startswith("input:"):
            return self._uploaded(field, ref[len("input:"):].strip())
        job_id = job_ref(field, ref)
        if job_id is not None:
            from farm.results.artifacts import ArtifactReader

            view = self.job(field, job_id)
            if view.artifact is None:
                raise InputError(field, f"job {job_id} has no stored image (state {view.state})")
            artifact = view.artifact
            if self._artifacts is None:
                self._artifacts = ArtifactReader(self.s3_endpoint_url)  # one client per store, kept
            return self._artifacts.read(artifact.store_url, artifact.key, artifact.sha256)
        if ref.startswith("s3://"):
            from farm.storage.s3 import S3Store

            parsed = urlparse(ref)
            key = parsed.path.lstrip("/")
            if not parsed.netloc or not key:
                raise InputError(field, f"{ref}: expected s3://BUCKET/KEY")
            try:
                return S3Store(f"s3://{parsed.netloc}", endpoint_url=self.s3_endpoint_url).get_raw(key)
            except NotFound:
                raise InputError(field, f"{ref}: no such object") from None
        if "://" in ref:
            raise InputError(field, f"{ref}: an image is a local path, an s3:// URI or job:ID")
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else self.cwd / path
        try:
            size = os.stat(path).st_size
            if path.is_dir():
                raise InputError(field, f"{ref}: is a directory")
            if size > MAX_INPUT_BYTES:
                raise InputError(field, f"{ref}: {size} bytes; the limit is {MAX_INPUT_BYTES}")
            return path.read_bytes()
        except FileNotFoundError:
            raise InputError(field, f"{ref}: no such file") from None
        except InputError:
            raise
        except OSError as exc:
            raise InputError(field, f"{ref}: {exc.strerror}") from None

    def _uploaded(self, field: str, sha256: str) -> bytes:
        """An input image uploaded before (``input:<sha256>``), from the farm's store; a remote
        tenant reads only its own uploads (another's answers as an unknown one does)."""
        if not is_sha256(sha256):
            raise InputError(field, "expected input:<sha256> (64 hex digits) as an upload returned it")
        if self.policy.remote and not self.ledger(field, f"no input {sha256[:12]}").tenant_has_input(
                self.policy.tenant, sha256):
            raise InputError(field, f"no input {sha256[:12]}")
        if self.store_url is None:
            raise InputError(field, "uploaded inputs need the farm's store")
        from farm.results.artifacts import read_input

        try:
            return read_input(self.store_url, sha256, self.s3_endpoint_url)
        except NotFound:
            raise InputError(field, f"no input {sha256[:12]}") from None

    def image(self, field: str, ref: str, *, mask: bool = False, preprocess: str | None = None) -> ReadImage:
        """The checked, canonical image a reference names (read once per submission)."""
        key = (ref, mask, preprocess)
        if key not in self._read:
            from engine.inputs import check_image  # PIL: the render engine decodes images

            checked = check_image(field, self.read_bytes(field, ref), ref, mask=mask, preprocess=preprocess)
            self._read[key] = ReadImage(checked.sha256, checked.width, checked.height, checked.data)
        return self._read[key]


def check_upload(field: str, data: bytes, *, mask: bool = False) -> ReadImage:
    """An uploaded image checked as a submission's input is (decoded with the render engine's
    limits, made a canonical PNG): what the HTTP API stores for ``input:<sha256>``."""
    from engine.inputs import check_image  # PIL: the render engine decodes images

    checked = check_image(field, data, "upload", mask=mask)
    return ReadImage(checked.sha256, checked.width, checked.height, checked.data)
