"""Training jobs in the ledger (issue 14): progress, checkpoints, evaluation, and the result.

Every write here is fenced like a completion: it changes something only while the attempt's
token still owns the running job, so an attempt that was superseded (its worker lost, the job
cancelled or handed to another worker) can neither move the checkpoint pointer nor register a
result. Checkpoint blobs carry the token in their store key (farm.jobs.training.checkpoint_key), so a
superseded attempt's late write never replaces the checkpoint the ledger points at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import exists, select, update

from farm.jobs import events as kinds
from farm.jobs import states
from farm.ledger import events
from farm.ledger.lifecycle import Lifecycle
from farm.ledger.mapping import training_view
from farm.ledger.models import JOBS, Job, Training
from farm.ledger.registry import Registry
from farm.ledger.schema import rowcount
from farm.ledger.values import Completion, TrainingView
from farm.models.catalog import AdapterEntry, ModelEntry


@dataclass(frozen=True)
class Resume:
    """Where an attempt of a training job starts: a checkpoint in the store, or step 0."""

    key: str | None
    step: int


def _owns(job_id: int, token: str):
    """The attempt ``token`` still owns job ``job_id``, which is running."""
    return exists().where(Job.id == job_id, Job.current_attempt == token, Job.state == states.RUNNING)


class Trainings(Lifecycle, Registry):
    """Built on the lifecycle (completion's compare-and-set) and the registry (the result's row)."""

    def start_training(self, job_id: int, token: str, total_steps: int) -> Resume | None:
        """An attempt begins: where it starts (the last checkpoint's store key and step, or step 0),
        or None when the attempt does not own the job any more."""
        with self.session() as s:
            if not s.scalar(select(_owns(job_id, token))):
                return None
            row = s.get(Training, job_id)
            if row is None:
                row = Training(job_id=job_id, step=0, total_steps=total_steps)
                s.add(row)
            row.resumed_from = row.step = row.checkpoint_step or 0
            row.updated_at = self.clock()
            return Resume(row.checkpoint_key if row.checkpoint_step else None, row.checkpoint_step or 0)

    def report_progress(self, job_id: int, token: str, *, step: int, loss: float, steps_per_s: float,
                        eta_s: float | None) -> bool:
        with self.session() as s:
            if rowcount(s.execute(
                    update(Training).where(Training.job_id == job_id, _owns(job_id, token))
                    .values(step=step, loss=loss, steps_per_s=steps_per_s, eta_s=eta_s,
                            updated_at=self.clock()))) != 1:
                return False
            self._training_event(s, kinds.TRAINING_PROGRESS, job_id, step=step, loss=round(loss, 6),
                                 steps_per_s=round(steps_per_s, 3), eta_s=eta_s)
            return True

    def record_checkpoint(self, job_id: int, token: str, *, key: str, step: int) -> bool:
        """Point the job at a stored checkpoint; False (nothing changed) for a superseded attempt."""
        with self.session() as s:
            if rowcount(s.execute(
                    update(Training).where(Training.job_id == job_id, _owns(job_id, token))
                    .values(checkpoint_key=key, checkpoint_step=step, step=step, updated_at=self.clock()))) != 1:
                return False
            self._training_event(s, kinds.TRAINING_CHECKPOINT, job_id, step=step, key=key)
            return True

    def _training_event(self, s, kind: str, job_id: int, **body) -> None:
        row = s.execute(select(JOBS.c.id, JOBS.c.batch_id, JOBS.c.index, JOBS.c.seed).where(JOBS.c.id == job_id)).one()
        tenant = events.batch_tenants(s, [row.batch_id]).get(row.batch_id, "local")
        events.record(s, self.clock(), [events.job_event(kind, tenant, row, **body)])

    def finish_training(self, completion: Completion, *, evaluation: dict,
                        entry: AdapterEntry | ModelEntry, sha256: str) -> bool:
        """Complete the training job, record its evaluation and register its result, in one
        transaction: all of it happens, or (a superseded attempt, a name taken meanwhile) none."""
        what = "adapter" if isinstance(entry, AdapterEntry) else "model"
        with self.session() as s:  # the ORM session: the registry's row is an ORM object
            if not self._apply(s, "succeed", completion.job_id, completion.token, outcome=states.ATTEMPT_SUCCEEDED,
                               error=None, timings=completion.timings, batch_size=completion.batch_size,
                               artifact=completion.artifact, environment=completion.environment):
                return False
            s.execute(update(Training).where(Training.job_id == completion.job_id)
                      .values(evaluation=evaluation, result=entry.name, updated_at=self.clock()))
            self._insert_entry(s, what, entry, sha256)
            self._training_event(s, kinds.TRAINING_REGISTERED, completion.job_id, name=entry.name, what=what,
                                 sha256=sha256)
        return True

    def trainings(self, job_ids: Iterable[int]) -> dict[int, TrainingView]:
        ids = list(job_ids)
        if not ids:
            return {}
        with self.session() as s:
            return {row.job_id: training_view(row) for row in s.scalars(select(Training).where(Training.job_id.in_(ids)))}

    def trainings_of_batch(self, batch_id: str) -> dict[int, TrainingView]:
        with self.session() as s:
            rows = s.scalars(select(Training).join(Job, Job.id == Training.job_id).where(Job.batch_id == batch_id))
            return {row.job_id: training_view(row) for row in rows}
