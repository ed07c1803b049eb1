"""Reporting: job listings, batch summaries, recorded timings for ETAs and stats. Reads only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from farm.jobs import states
from farm.ledger.mapping import attempt_stat, batch_info, job_view, training_view
from farm.ledger.models import Artifact, Attempt, Batch, Job, Training
from farm.ledger.schema import Database
from farm.ledger.values import AttemptStat, BatchSummary, JobView


class Queries(Database):
    def list_jobs(self, batch_id: str | None = None, state: str | None = None, limit: int | None = None,
                  job_id: int | None = None, tenant: str | None = None) -> list[JobView]:
        """Jobs with their latest attempt's timings and their artifact, oldest first; with
        ``tenant``, of that tenant's batches only."""
        with self.session() as s:
            query = select(Job).order_by(Job.id)
            if tenant is not None:
                query = query.join(Batch, Batch.id == Job.batch_id).where(Batch.tenant == tenant)
            if job_id is not None:
                query = query.where(Job.id == job_id)
            if batch_id:
                query = query.where(Job.batch_id == batch_id)
            if state:
                query = query.where(Job.state == state)
            if limit:
                query = query.limit(limit)
            jobs = list(s.scalars(query))
            ids = [j.id for j in jobs]
            artifacts = {a.job_id: a for a in s.scalars(select(Artifact).where(Artifact.job_id.in_(ids)))} if ids else {}
            attempts: dict[int, Attempt] = {}
            if ids:
                for a in s.scalars(select(Attempt).where(Attempt.job_id.in_(ids)).order_by(Attempt.id)):
                    attempts[a.job_id] = a  # the latest wins
            trained = [j.id for j in jobs if j.training is not None]  # issue 14: training jobs' progress
            trainings = {t.job_id: training_view(t)
                         for t in s.scalars(select(Training).where(Training.job_id.in_(trained)))} if trained else {}
            return [job_view(j, attempts.get(j.id), artifacts.get(j.id), trainings.get(j.id)) for j in jobs]

    def batches(self, limit: int = 50, tenant: str | None = None) -> list[BatchSummary]:
        """Recent batches, newest first; with ``tenant``, that tenant's only."""
        with self.session() as s:
            query = select(Batch).order_by(Batch.created_at.desc()).limit(limit)
            if tenant is not None:
                query = query.where(Batch.tenant == tenant)
            batches = list(s.scalars(query))
            ids = [b.id for b in batches]
            counts: dict[str, dict[str, int]] = {i: {st: 0 for st in states.STATES} for i in ids}
            for batch_id, state, n in s.execute(select(Job.batch_id, Job.state, func.count())
                                                .where(Job.batch_id.in_(ids)).group_by(Job.batch_id, Job.state)):
                counts[batch_id][state] = n
            return [BatchSummary(batch_info(b), counts[b.id], sum(counts[b.id][t] for t in states.TERMINAL))
                    for b in batches]

    def history_ms(self, *, model: str, recipe: str, width: int, height: int, steps: int) -> float | None:
        """Median recorded time per image (total ms) of rendered jobs with these settings; from the
        same model, recipe and size at other step counts, scaled by steps, when there is none."""
        with self.session() as s:
            rows = s.execute(
                select(Attempt.total_ms, Job.steps).join(Job, Job.id == Attempt.job_id)
                .where(Job.model == model, Job.recipe == recipe, Job.width == width, Job.height == height,
                       Attempt.outcome == states.ATTEMPT_SUCCEEDED, Attempt.total_ms.is_not(None))
                .order_by(Attempt.id.desc()).limit(500)).all()
        return median_at_steps(rows, steps)

    def attempt_rows(self, since: datetime) -> list[AttemptStat]:
        """Finished attempts since ``since``, with their job's model and recipe, for stats."""
        with self.session() as s:
            rows = s.execute(
                select(Attempt, Job.model, Job.recipe).join(Job, Job.id == Attempt.job_id)
                .where(Attempt.finished_at >= since, Attempt.outcome != states.ATTEMPT_RUNNING)
                .order_by(Attempt.finished_at)).all()
            return [attempt_stat(a, model, recipe) for a, model, recipe in rows]


def median_at_steps(rows, steps: int) -> float | None:
    """The median of (ms, steps) rows at ``steps``; with none at it, the median per step of the
    others times ``steps``; None without rows."""
    totals = [(float(ms), int(n)) for ms, n in rows if ms is not None]
    exact = sorted(ms for ms, n in totals if n == steps)
    if exact:
        return exact[len(exact) // 2]
    per_step = sorted(ms / max(1, n) for ms, n in totals)
    return per_step[len(per_step) // 2] * steps if per_step else None

