"""The input images a submission names (issue 13): read, checked, kept until the batch is written.

An image is named by a local path, an ``s3://bucket/key`` URI, or ``job:ID`` (the stored image of
an earlier job, read from the store it was written to and checked against the ledger's sha256).
The bytes are read here; decoding and checking is the render engine's (``engine.inputs``, PIL,
imported on purpose: ``farm`` itself never imports PIL). Nothing is written while planning: the
canonical PNGs wait in the plan, and ``farm.producer.submit`` stores them (``inputs/<sha256>.png``)
before the batch is recorded, so a job never names an input the store lacks.

A job that starts from ``job:ID`` takes that job's prompt, negative prompt and model when it gives
none, so ``farm submit --from-batch B --kind upscale`` re-renders each image of B as it was asked for.
``--from-batch B`` is an axis over ``job:ID`` of every succeeded image of B (farm.planning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from farm.errors import InputError, NotFound
from farm.kinds import INPUT_FIELDS, MAX_INPUT_BYTES, InputInfo

if TYPE_CHECKING:
    from farm.results import ArtifactReader


@dataclass(frozen=True)
class ReadImage:
    sha256: str
    width: int
    height: int
    data: bytes  # the canonical PNG to store


@dataclass(frozen=True)
class SourceJob:
    """What a job that starts from ``job:ID`` may take over from that job."""

    id: int
    prompt: str
    negative_prompt: str
    model: str


def job_ref(field: str, ref: str) -> int | None:
    """The job id of a ``job:ID`` reference, or None for a path or URI."""
    if not ref.startswith("job:"):
        return None
    text = ref[len("job:"):].strip()
    if not text.isdigit():
        raise InputError(field, f"{ref!r}: expected job:ID with a job id such as job:42")
    return int(text)


class InputReader:
    """Reads and checks input images for one submission (each reference once).

    ``ledger``: a function returning the farm's ledger, or None where there is none yet (a fresh
    farm home, which holds no jobs); called only for ``job:`` references and ``--from-batch``."""

    def __init__(self, *, ledger: Callable[[], object] | None = None, s3_endpoint_url: str | None = None,
                 cwd: Path | None = None):
        self._ledger = ledger
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
            [view] = self.ledger(field, f"no job {job_id}").list_jobs(job_id=job_id) or [None]
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
            views = self.ledger("from_batch", f"no batch {batch!r}").list_jobs(batch_id=batch.strip())
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
        job_id = job_ref(field, ref)
        if job_id is not None:
            from farm.results import ArtifactReader

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

    def image(self, field: str, ref: str, *, mask: bool = False, preprocess: str | None = None) -> ReadImage:
        """The checked, canonical image a reference names (read once per submission)."""
        key = (ref, mask, preprocess)
        if key not in self._read:
            from engine.inputs import check_image  # PIL: the render engine decodes images

            checked = check_image(field, self.read_bytes(field, ref), ref, mask=mask, preprocess=preprocess)
            self._read[key] = ReadImage(checked.sha256, checked.width, checked.height, checked.data)
        return self._read[key]


def with_inputs(request, reader: InputReader | None, infos: dict[str, InputInfo], blobs: dict[str, bytes]):
    """``request`` with its image references replaced by the sha256 of their canonical PNGs (the
    PNGs go to ``blobs``, their sizes to ``infos``), and the prompt, negative prompt and model of a
    ``job:ID`` init image filled in where the request gives none."""
    changes: dict = {}
    for field in INPUT_FIELDS:
        ref = getattr(request, field)
        if ref is None or (isinstance(ref, str) and ref in infos):
            continue
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(field, f"expected a path, an s3:// URI or job:ID, got {ref!r}")
        if reader is None:
            raise InputError(field, "image inputs are read by the producer (farm submit, Farm.submit)")
        image = reader.image(field, ref.strip(), mask=field == "mask_image",
                             preprocess=request.control_preprocess if field == "control_image" else None)
        infos[image.sha256] = InputInfo(image.sha256, image.width, image.height)
        blobs[image.sha256] = image.data
        changes[field] = image.sha256
    source = reader.source_job(request.init_image.strip()) if reader is not None and \
        isinstance(request.init_image, str) and "init_image" in changes else None
    if source is not None:
        if request.prompt is None:
            changes["prompt"] = source.prompt
            if request.negative_prompt is None:
                changes["negative_prompt"] = source.negative_prompt
        if request.model is None:
            changes["model"] = source.model
    return replace(request, **changes) if changes else request
