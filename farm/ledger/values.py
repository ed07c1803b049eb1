"""What the ledger hands out: typed, immutable values (never ORM rows, which would tie callers to
a session, nor loose dicts and tuples)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from farm.jobs.spec import JobSpec

TIMING_NAMES = ("queue_wait", "model_load", "adapter_load", "text_encode", "denoise", "vae_decode",
                "image_encode", "upload", "total")  # ms, each a column NAME_ms of the attempt
PEAK_MEMORY = "peak_memory_mb"  # reported with the timings: the pipeline call's peak device memory


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class StoredJob:
    """A job where it sits in the ledger (batch, index, priority, state) plus its spec."""

    id: int
    batch_id: str
    index: int
    priority: int
    state: str
    queued_at: datetime
    spec: JobSpec


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns: completing it must present ``token`` (the fencing token)."""

    job: StoredJob
    token: str
    started_at: datetime

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def id(self) -> int:
        return self.job.id

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def batch_id(self) -> str:
        return self.job.batch_id

    @property
    def index(self) -> int:
        return self.job.index

    @property
    def queued_at(self) -> datetime:
        return self.job.queued_at


@dataclass(frozen=True)
class Completion:
    """A rendered and stored image, ready to be recorded against its claim."""

    job_id: int
    token: str
    artifact: Artifact
    timings: dict
    batch_size: int
    environment: dict | None = None


@dataclass(frozen=True)
class NewBatch:
    id: str
    created: bool  # False: an idempotency key returned an existing batch
    job_ids: list[int]
    to_render: list[int] | None = None  # None: all of them


@dataclass(frozen=True)
class BatchInfo:
    id: str
    created_at: datetime
    submitter: str
    priority: int
    model: str
    recipe: str
    base_seed: int
    job_count: int
    state: str
    spec: dict = field(default_factory=dict)  # the submission as given
    tenant: str = "local"  # issue 23: whose batch it is


@dataclass(frozen=True)
class BatchSummary:
    """One line of `farm batches list`."""

    batch: BatchInfo
    counts: dict[str, int]
    done: int

    def as_dict(self) -> dict:
        b = self.batch
        return {"batch": b.id, "created_at": b.created_at.isoformat(), "state": b.state, "priority": b.priority,
                "model": b.model, "recipe": b.recipe, "jobs": b.job_count, "counts": self.counts, "done": self.done}


@dataclass(frozen=True)
class Artifact:
    store_url: str
    key: str
    sha256: str
    bytes: int
    width: int
    height: int
    content_type: str

    def as_dict(self) -> dict:
        return {"store_url": self.store_url, "key": self.key, "sha256": self.sha256, "bytes": self.bytes,
                "width": self.width, "height": self.height, "content_type": self.content_type}


def image_fields(spec: JobSpec) -> dict:
    """An image job's inputs and settings as `farm jobs list --json` shows them (issue 13), with the
    denoising steps that run (``int(steps x strength)``); nothing for a txt2img job."""
    from farm.jobs.kinds import FLAGS, denoise_steps

    if spec.kind in ("txt2img", "clip"):
        return {}
    return {**{name: getattr(spec, name) for name in FLAGS}, "denoise_steps": denoise_steps(spec.kind, spec.steps,
                                                                                          spec.strength)}


@dataclass(frozen=True)
class TrainingView:
    """A training job's progress, last checkpoint and evaluation (issue 14)."""

    step: int
    total_steps: int
    loss: float | None
    steps_per_s: float | None
    eta_s: float | None
    updated_at: datetime | None
    checkpoint_step: int | None
    checkpoint_key: str | None
    resumed_from: int | None
    evaluation: dict | None
    result: str | None  # the adapter or model it registered

    def as_dict(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "loss": self.loss,
                "steps_per_s": self.steps_per_s, "eta_s": self.eta_s, "updated_at": _iso(self.updated_at),
                "checkpoint_step": self.checkpoint_step, "checkpoint": self.checkpoint_key,
                "resumed_from": self.resumed_from, "evaluation": self.evaluation, "result": self.result}


@dataclass(frozen=True)
class JobView:
    """A job with its latest attempt and its stored image: what `farm jobs list` shows."""

    job: StoredJob
    digest: str
    attempts: int
    axes: dict
    reused_from: int | None
    last_error: str | None
    worker: str | None
    device: str | None
    timings: dict[str, float | None]  # ms per stage of the latest attempt (TIMING_NAMES)
    batch_size: int | None
    environment: dict | None
    artifact: Artifact | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    training: TrainingView | None = None  # a training job's progress (issue 14)

    # the fields scripts read most, without going through .job / .spec
    @property
    def id(self) -> int:
        return self.job.id

    @property
    def batch(self) -> str:
        return self.job.batch_id

    @property
    def index(self) -> int:
        return self.job.index

    @property
    def state(self) -> str:
        return self.job.state

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def seed(self) -> int:
        return self.job.spec.seed

    @property
    def prompt(self) -> str:
        return self.job.spec.prompt

    def as_dict(self) -> dict:
        """The JSON shape of `farm jobs list --json` (stable for scripts)."""
        spec = self.job.spec
        return {
            "id": self.id, "batch": self.batch, "index": self.index, "state": self.state,
            "prompt": spec.prompt, "negative_prompt": spec.negative_prompt, "seed": spec.seed,
            "steps": spec.steps, "guidance": spec.guidance, "width": spec.width, "height": spec.height,
            "model": spec.model, "recipe": spec.recipe, "scheduler": spec.scheduler,
            "adapters": spec.adapter_dicts(), "decoder": spec.decoder, "kind": spec.kind, "digest": self.digest,
            "attempts": self.attempts, "axes": self.axes, "reused_from": self.reused_from,
            "last_error": self.last_error, "worker": self.worker, "device": self.device,
            "timings": dict(self.timings), "batch_size": self.batch_size, "environment": self.environment,
            "artifact": self.artifact.key if self.artifact else None,
            "sha256": self.artifact.sha256 if self.artifact else None,
            "store_url": self.artifact.store_url if self.artifact else None,
            "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            # issue 13: the images it started from (sha256 of inputs/<sha256>.png) and the kind's settings
            **image_fields(spec),
            **({"clip": spec.clip} if spec.clip else {}),  # issue 27: frames, fps, motion module, format
            # issue 14: a training job's settings and progress
            **({"training": {**spec.training, "progress": self.training.as_dict() if self.training else None}}
               if spec.training is not None else {}),
        }


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host: str
    pid: int | None
    device: str
    gpu_name: str | None
    started_at: datetime
    last_heartbeat: datetime
    state: str
    resident_models: list
    resident_adapters: list
    current_job: int | None
    images_rendered: int
    last_error: str | None
    versions: dict
    models: list  # the models it serves; ["*"]: every one
    busy_ms: float = 0.0  # its time in pipeline calls (issue 24)

    def serves(self, model: str) -> bool:
        return "*" in self.models or model in self.models


@dataclass(frozen=True)
class AttemptStat:
    """A finished attempt, for `farm stats`."""

    outcome: str
    started_at: datetime
    finished_at: datetime | None
    model: str
    recipe: str
    device: str
    worker: str
    batch_size: int | None
    timings: dict[str, float | None]

    def as_dict(self) -> dict:
        """The flat shape ``farm.results.stats.summarise`` reads (stage names as keys)."""
        return {"outcome": self.outcome, "started_at": self.started_at, "finished_at": self.finished_at,
                "model": self.model, "recipe": self.recipe, "device": self.device, "worker": self.worker,
                "batch_size": self.batch_size, **self.timings}


@dataclass(frozen=True)
class Event:
    """An outbox row (issue 25): ``id`` orders them (commit order), ``body`` is small JSON."""

    id: int
    type: str
    tenant: str
    batch_id: str | None
    created_at: datetime
    body: dict

    def as_dict(self) -> dict:
        return {"id": self.id, "type": self.type, "tenant": self.tenant, "batch": self.batch_id,
                "created_at": _iso(self.created_at), "data": self.body}


@dataclass(frozen=True)
class WebhookInfo:
    """A webhook endpoint, without its secret (shown once, when it is made)."""

    id: int
    tenant: str
    url: str
    events: tuple[str, ...]
    batch_id: str | None
    created_at: datetime
    cursor: int
    failures: int
    next_attempt_at: datetime | None

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events

    def as_dict(self) -> dict:
        return {"id": self.id, "tenant": self.tenant, "url": self.url, "events": list(self.events),
                "batch": self.batch_id, "created_at": _iso(self.created_at), "delivered_through": self.cursor,
                "failures": self.failures, "next_attempt_at": _iso(self.next_attempt_at)}


@dataclass(frozen=True)
class DeliveryInfo:
    """One attempt to deliver an event to an endpoint."""

    id: int
    endpoint_id: int
    event_id: int
    attempt: int
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float | None

    def as_dict(self) -> dict:
        return {"id": self.id, "webhook": self.endpoint_id, "event": self.event_id, "webhook_id": f"evt_{self.event_id}",
                "attempt": self.attempt, "at": _iso(self.at), "ok": self.ok, "status_code": self.status_code,
                "error": self.error, "duration_ms": self.duration_ms}
