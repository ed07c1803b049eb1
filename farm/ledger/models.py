"""SQLAlchemy 2 models of the ledger: batches, jobs, attempts, artifacts, workers.

The ledger is the source of truth; Redis only carries job ids. Timestamps are UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the ledger; use UTC-aware datetimes")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    submitter: Mapped[str] = mapped_column(String(128), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    request_digest: Mapped[str] = mapped_column(String(64))  # of the submission, to spot a reused key
    spec: Mapped[dict] = mapped_column(JSON)  # the submission as given
    priority: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[str] = mapped_column(String(64))
    base_seed: Mapped[int] = mapped_column(BigInteger)
    job_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | paused
    tenant: Mapped[str] = mapped_column(String(64), default="local", server_default="local")  # issue 23

    __table_args__ = (Index("ix_batches_tenant_created", "tenant", "created_at"),)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "index", name="uq_jobs_batch_index"),
        Index("ix_jobs_batch_state", "batch_id", "state"),
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_state_enqueued", "state", "enqueued_at"),
        Index("ix_jobs_digest", "digest"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(64))
    model_revision: Mapped[str | None] = mapped_column(String(64))
    family: Mapped[str] = mapped_column(String(16))
    recipe: Mapped[str] = mapped_column(String(64))
    scheduler: Mapped[str | None] = mapped_column(String(64))
    scheduler_config: Mapped[dict] = mapped_column(JSON)
    adapters: Mapped[list] = mapped_column(JSON)  # [{"name", "weight", "role"}], accelerator first
    decoder: Mapped[str] = mapped_column(String(8), default="full", server_default="full")  # or "tiny" (TAESD)
    kind: Mapped[str] = mapped_column(String(16), default="txt2img", server_default="txt2img")  # spec.KINDS
    # the textual-inversion embeddings its prompts use (names, sorted)
    embeddings: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    # issue 13, jobs that start from images (farm.jobs.kinds): inputs by the sha256 of their stored PNG
    init_image: Mapped[str | None] = mapped_column(String(64))
    mask_image: Mapped[str | None] = mapped_column(String(64))
    control_image: Mapped[str | None] = mapped_column(String(64))
    strength: Mapped[float | None] = mapped_column(Float)
    mask_blur: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    controlnet: Mapped[str | None] = mapped_column(String(64))
    control_scale: Mapped[float | None] = mapped_column(Float)
    control_preprocess: Mapped[str | None] = mapped_column(String(16))
    upscale: Mapped[float | None] = mapped_column(Float)
    # issue 14, training jobs (farm.jobs.training): the settings only a training job has
    training: Mapped[dict | None] = mapped_column(JSON)
    # issue 27, clips (farm.jobs.clips): frames, fps, motion module, format; NULL for an image
    clip: Mapped[dict | None] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    current_attempt: Mapped[str | None] = mapped_column(String(32))  # fencing token of the live attempt
    last_error: Mapped[str | None] = mapped_column(Text)
    axes: Mapped[dict] = mapped_column(JSON, default=dict)  # the sweep cell this job is (for contact sheets)
    reused_from: Mapped[int | None] = mapped_column(BigInteger)  # satisfied by this job's artifact, not rendered
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # message published
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())  # a retry's backoff: publish after this
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # issue 24: GPU ms charged to the tenant (an estimate until settled by the measured attempts)
    cost_ms: Mapped[float | None] = mapped_column(Float)
    settled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    worker: Mapped[str] = mapped_column(String(128))
    device: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    batch_size: Mapped[int | None] = mapped_column(Integer)  # images in the pipeline call
    environment: Mapped[dict | None] = mapped_column(JSON)  # library versions, device, adapter sha256s
    # per-stage timings in ms; a micro-batch's shared stages are divided among its images
    queue_wait_ms: Mapped[float | None] = mapped_column(Float)
    model_load_ms: Mapped[float | None] = mapped_column(Float)
    adapter_load_ms: Mapped[float | None] = mapped_column(Float)
    text_encode_ms: Mapped[float | None] = mapped_column(Float)
    denoise_ms: Mapped[float | None] = mapped_column(Float)
    vae_decode_ms: Mapped[float | None] = mapped_column(Float)
    image_encode_ms: Mapped[float | None] = mapped_column(Float)
    upload_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)  # of the pipeline call; 0 on a CPU
    gpu_ms: Mapped[float | None] = mapped_column(Float)  # its share of the pipeline call (issue 24)


TIMING_FIELDS = (
    "queue_wait_ms", "model_load_ms", "adapter_load_ms", "text_encode_ms", "denoise_ms",
    "vae_decode_ms", "image_encode_ms", "upload_ms", "total_ms", "peak_memory_mb", "gpu_ms",
)


class Artifact(Base):
    __tablename__ = "artifacts"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    store_url: Mapped[str] = mapped_column(String(512))
    key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    gpu_name: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16), default="active")  # active|draining|cordoned|stopped
    resident_models: Mapped[list] = mapped_column(JSON, default=list)
    resident_adapters: Mapped[list] = mapped_column(JSON, default=list)
    current_job: Mapped[int | None] = mapped_column(BigInteger)
    images_rendered: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    versions: Mapped[dict] = mapped_column(JSON, default=dict)  # torch/diffusers/peft versions
    # the models it serves (its queues); ["*"]: every model, also those registered later
    models: Mapped[list] = mapped_column(JSON, default=lambda: ["*"], server_default='["*"]')
    busy_ms: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # in pipeline calls


class RegisteredModel(Base):
    """A model added with `farm models add` (built-ins live in farm.models.catalog)."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    family: Mapped[str] = mapped_column(String(16))
    arch: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), default="base")
    revision: Mapped[str | None] = mapped_column(String(64))
    native_size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))  # of an s3:// source
    layout: Mapped[str] = mapped_column(String(16), default="diffusers")  # or "single-file"
    provenance: Mapped[str | None] = mapped_column(String(128))  # "job:ID" of the training job that made it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AcceleratorBinding(Base):
    """A model bound to its own accelerator (issue 14): its recipe picks this adapter first.
    Built-in models can be bound too, so the binding is a table of its own."""

    __tablename__ = "accelerator_bindings"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    recipe: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Training(Base):
    """A training job's progress, its last checkpoint and its evaluation (issue 14). Written only
    by the attempt that owns the job (the fencing token), read by status and by the next attempt."""

    __tablename__ = "trainings"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    steps_per_s: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    checkpoint_key: Mapped[str | None] = mapped_column(String(1024))
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    resumed_from: Mapped[int | None] = mapped_column(Integer)  # the step the latest attempt started at
    evaluation: Mapped[dict | None] = mapped_column(JSON)
    result: Mapped[str | None] = mapped_column(String(64))  # the registered adapter or model


class RegisteredAdapter(Base):
    """A LoRA added with `farm adapters add`."""

    __tablename__ = "adapters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    arch: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    weight_name: Mapped[str | None] = mapped_column(String(255))
    recipe: Mapped[str | None] = mapped_column(String(64))
    steps: Mapped[int | None] = mapped_column(Integer)
    guidance_max: Mapped[float | None] = mapped_column(Float)
    revision: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))  # of its file: a duplicate is refused
    layout: Mapped[str | None] = mapped_column(String(16))  # "kohya" or "diffusers"; None: not looked into
    addnet_sha256: Mapped[str | None] = mapped_column(String(64))  # A1111's "Lora hashes"
    # issue 14: an LCM-LoRA's solver steps (LCMScheduler's original_inference_steps = 1000 / k)
    original_steps: Mapped[int | None] = mapped_column(Integer)
    provenance: Mapped[str | None] = mapped_column(String(128))  # "job:ID" of the training job that made it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RegisteredEmbedding(Base):
    """A textual-inversion embedding added with `farm embeddings add`."""

    __tablename__ = "embeddings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    arch: Mapped[str] = mapped_column(String(32))
    token: Mapped[str] = mapped_column(String(64))
    vectors: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RegisteredControlNet(Base):
    """A ControlNet added with `farm controlnets add` (issue 13)."""

    __tablename__ = "controlnets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    arch: Mapped[str] = mapped_column(String(32))
    revision: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    layout: Mapped[str] = mapped_column(String(16), default="diffusers")  # or "single-file"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RegisteredMotionAdapter(Base):
    """A motion module added with `farm motion add` (issue 27)."""

    __tablename__ = "motion_adapters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    arch: Mapped[str] = mapped_column(String(32))
    weight_name: Mapped[str | None] = mapped_column(String(256))
    recipe: Mapped[str | None] = mapped_column(String(64))
    steps: Mapped[int | None] = mapped_column(Integer)
    beta_schedule: Mapped[str | None] = mapped_column(String(32))
    revision: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Tenant(Base):
    """Who shares the farm (issue 23): the operator's CLI is ``local``."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    s3_prefixes: Mapped[list | None] = mapped_column(JSON)  # the s3:// prefixes the operator lets it name
    quotas: Mapped[dict | None] = mapped_column(JSON)
    vfinish: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # fair order (issue 24)


class ApiKey(Base):
    """An API key: found by its public prefix, checked against an HMAC of the whole key (the key
    itself is shown once and never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.name"))
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated: submit, read, admin
    label: Mapped[str] = mapped_column(String(128), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TenantInput(Base):
    """An input image a tenant uploaded: its content id is usable by that tenant only."""

    __tablename__ = "tenant_inputs"

    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.name"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Lock(Base):
    """A named lease, so one process in the fleet runs periodic maintenance at a time."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Event(Base):
    """The outbox (issue 25): what happened, written in the transaction of the change it reports,
    so a crash never loses one nor reports a change that did not commit. Ids are in commit order
    (farm.ledger.events takes a lock for the insert on PostgreSQL): a reader that saw id N has seen
    every earlier event, which is what makes a cursor enough to resume."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_tenant_id", "tenant", "id"), Index("ix_events_batch_id", "batch_id", "id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    tenant: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str | None] = mapped_column(String(24))
    type: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict] = mapped_column(JSON)


class WebhookEndpoint(Base):
    """Where a tenant's events are POSTed, signed with ``secret`` (Standard Webhooks); ``cursor`` is
    the last event delivered (or skipped by the filter): delivery resumes after it, whoever delivers."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))  # the deliverer signs with it: kept, unlike a key
    events: Mapped[str] = mapped_column(String(512))  # comma-separated types, or "*"
    batch_id: Mapped[str | None] = mapped_column(String(24))  # only this batch's events
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row, for the backoff
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One attempt to deliver one event to one endpoint (``farm webhooks deliveries``)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)


# the tables behind the models, for the Core statements of the hot paths (claim, completion, a
# batch's insert: the ORM's unit of work and bulk plugins are not needed there; issue 15)
BATCHES, JOBS, ATTEMPTS, ARTIFACTS = (cast(Table, model.__table__) for model in (Batch, Job, Attempt, Artifact))
TENANTS = cast(Table, Tenant.__table__)
EVENTS = cast(Table, Event.__table__)
