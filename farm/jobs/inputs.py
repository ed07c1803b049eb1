"""The input images a job names (issue 13), as the plan sees them: references (a local path, an
``s3://bucket/key`` URI or ``job:ID``) replaced by the sha256 of their canonical PNGs. Pure: the
bytes are read and checked by a reader handed in (``farm.intake.images.InputReader``), and nothing
is written while planning: the canonical PNGs wait in the plan, and ``farm.fleet.producer.submit``
stores them (``inputs/<sha256>.png``) before the batch is recorded, so a job never names an input
the store lacks.

A job that starts from ``job:ID`` takes that job's prompt, negative prompt and model when it gives
none, so ``farm submit --from-batch B --kind upscale`` re-renders each image of B as it was asked for.
``--from-batch B`` is an axis over ``job:ID`` of every succeeded image of B (farm.jobs.planning).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from farm.errors import InputError
from farm.jobs.kinds import INPUT_FIELDS, InputInfo


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


class ReadsInputs(Protocol):
    """What reads the images a submission names (``farm.intake.images.InputReader``)."""

    def image(self, field: str, ref: str, *, mask: bool = False, preprocess: str | None = None) -> ReadImage: ...

    def source_job(self, ref: object) -> SourceJob | None: ...


def with_inputs(request, reader: ReadsInputs | None, infos: dict[str, InputInfo], blobs: dict[str, bytes]):
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
