"""The one place where a job's spec meets its ledger row, both ways.

Every ``JobSpec`` field but ``warnings`` is a column of ``jobs`` with the same name, so a new plain
job field needs its column (models.py and a migration) and nothing here. Only ``adapters`` is
converted: a tuple of ``AdapterUse`` in the spec, a JSON list of objects in the row.
"""

from __future__ import annotations

from dataclasses import fields

from farm.jobs.spec import AdapterUse, JobSpec
from farm.ledger import models
from farm.ledger.values import (
    PEAK_MEMORY,
    TIMING_NAMES,
    Artifact,
    AttemptStat,
    BatchInfo,
    JobView,
    StoredJob,
    TrainingView,
    WorkerInfo,
)

NOT_STORED = ("warnings",)  # shown at submission, not part of the job
SPEC_COLUMNS = tuple(f.name for f in fields(JobSpec) if f.name not in NOT_STORED)
FLOAT_FIELDS = ("guidance", "strength", "control_scale", "upscale")


def spec_columns(spec: JobSpec) -> dict:
    """The ``jobs`` column values of a spec (digest included)."""
    values = {name: getattr(spec, name) for name in SPEC_COLUMNS}
    values["adapters"] = spec.adapter_dicts()
    values["digest"] = spec.digest
    return values


def _columns(row):
    """Column access for both kinds of row: a Core row's mapping (its attributes clash with
    tuple methods such as ``index``) or an ORM object's attributes."""
    mapping = getattr(row, "_mapping", None)
    return mapping.__getitem__ if mapping is not None else row.__getattribute__


def spec_from_row(row) -> JobSpec:
    """A spec from a ``jobs`` row: an ORM object or a Core row."""
    column = _columns(row)
    values = {name: column(name) for name in SPEC_COLUMNS}
    values["adapters"] = tuple(AdapterUse(a["name"], float(a["weight"]), a.get("role", "style"))
                               for a in (values["adapters"] or ()))
    values["scheduler_config"] = values["scheduler_config"] or {}
    # SQLite hands a whole-number REAL back as an int through Core rows: 1.0 came back as 1, and the
    # worker's record (and its digest, which hashes the JSON) differed from the ledger's
    for name in FLOAT_FIELDS:
        if values[name] is not None:
            values[name] = float(values[name])
    return JobSpec(**values)


def stored_job(row) -> StoredJob:
    column = _columns(row)
    return StoredJob(id=column("id"), batch_id=column("batch_id"), index=column("index"),
                     priority=column("priority"), state=column("state"), queued_at=column("queued_at"),
                     spec=spec_from_row(row))


def timings_of(attempt) -> dict[str, float | None]:
    return {**{name: getattr(attempt, f"{name}_ms") for name in TIMING_NAMES},
            PEAK_MEMORY: getattr(attempt, PEAK_MEMORY)}


def artifact_of(row: models.Artifact | None) -> Artifact | None:
    return None if row is None else artifact_value(row)


def artifact_value(row: models.Artifact) -> Artifact:
    return Artifact(store_url=row.store_url, key=row.key, sha256=row.sha256, bytes=row.bytes, width=row.width,
                    height=row.height, content_type=row.content_type)


def training_view(row: models.Training) -> TrainingView:
    return TrainingView(step=row.step, total_steps=row.total_steps, loss=row.loss, steps_per_s=row.steps_per_s,
                        eta_s=row.eta_s, updated_at=row.updated_at, checkpoint_step=row.checkpoint_step,
                        checkpoint_key=row.checkpoint_key, resumed_from=row.resumed_from,
                        evaluation=row.evaluation, result=row.result)


def job_view(job: models.Job, attempt: models.Attempt | None, artifact: models.Artifact | None,
             training: TrainingView | None = None) -> JobView:
    return JobView(
        job=stored_job(job), digest=job.digest, attempts=job.attempts, axes=job.axes or {},
        reused_from=job.reused_from, last_error=job.last_error,
        worker=attempt.worker if attempt else None, device=attempt.device if attempt else None,
        timings=timings_of(attempt) if attempt else {}, batch_size=attempt.batch_size if attempt else None,
        environment=attempt.environment if attempt else None, artifact=artifact_of(artifact),
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, training=training,
    )


def batch_info(row: models.Batch) -> BatchInfo:
    return BatchInfo(id=row.id, created_at=row.created_at, submitter=row.submitter or "", priority=row.priority,
                     model=row.model, recipe=row.recipe, base_seed=row.base_seed, job_count=row.job_count,
                     state=row.state, spec=row.spec or {}, tenant=row.tenant or "local")


def worker_info(row: models.Worker) -> WorkerInfo:
    return WorkerInfo(name=row.name, host=row.host, pid=row.pid, device=row.device, gpu_name=row.gpu_name,
                      started_at=row.started_at, last_heartbeat=row.last_heartbeat, state=row.state,
                      resident_models=list(row.resident_models or []),
                      resident_adapters=list(row.resident_adapters or []), current_job=row.current_job,
                      images_rendered=row.images_rendered or 0, last_error=row.last_error,
                      versions=dict(row.versions or {}), models=list(row.models or ["*"]),
                      busy_ms=float(row.busy_ms or 0.0))


def attempt_stat(attempt: models.Attempt, model: str, recipe: str) -> AttemptStat:
    return AttemptStat(outcome=attempt.outcome, started_at=attempt.started_at, finished_at=attempt.finished_at,
                       model=model, recipe=recipe, device=attempt.device, worker=attempt.worker,
                       batch_size=attempt.batch_size, timings=timings_of(attempt))
