"""What the farm tells about itself (issue 25): the event types of the outbox, the stream and the
webhooks, pure vocabulary shared by the ledger that writes them and the shells that filter them."""

from __future__ import annotations

from farm.errors import InputError

BATCH_ACCEPTED = "batch.accepted"
BATCH_RETRIED = "batch.retried"  # failed or cancelled jobs were queued again: the batch is open again
BATCH_FINISHED = "batch.finished"  # its last job reached a terminal state
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
TRAINING_PROGRESS = "training.progress"
TRAINING_CHECKPOINT = "training.checkpoint"
TRAINING_REGISTERED = "training.registered"
WORKER_LOST = "worker.lost"  # its lease on a job lapsed: the job was requeued or failed

TYPES = (BATCH_ACCEPTED, BATCH_RETRIED, BATCH_FINISHED, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED,
         TRAINING_PROGRESS, TRAINING_CHECKPOINT, TRAINING_REGISTERED, WORKER_LOST)


def parse_types(text: str | list[str] | None) -> tuple[str, ...]:
    """``batch.finished,job.failed`` (or a list, or ``*``/empty for every type) -> the types, checked."""
    items = text if isinstance(text, list) else (text or "*").split(",")
    names = tuple(dict.fromkeys(str(i).strip() for i in items if str(i).strip())) or ("*",)
    if "*" in names:
        return ("*",)
    unknown = [n for n in names if n not in TYPES]
    if unknown:
        raise InputError("events", f"unknown event type {unknown[0]!r} (known: {', '.join(TYPES)})")
    return names
