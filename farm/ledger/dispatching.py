"""What the fair-share dispatcher reads and writes (issue 24): jobs waiting to be published,
tenants' finish tags, the charge of each published job and its settlement against measured time.

The ledger stays the truth: a job is marked published (``enqueued_at``) and charged to its tenant
in one transaction, before its message goes out; a dispatcher killed between the two leaves a job
marked and unpublished, which the reconciler finds past its grace period and publishes. Nothing
here decides an order: that is ``farm.fleet.fairshare``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import case, func, select, update

from farm.jobs import states
from farm.ledger.models import ATTEMPTS, BATCHES, JOBS, TENANTS, Attempt, Batch, Job, Tenant
from farm.ledger.queries import median_at_steps
from farm.ledger.schema import Database


class Dispatching(Database):
    def undispatched(self, after_id: int = 0, limit: int = 200_000) -> list[tuple[int, str, int, str]]:
        """(job id, tenant, priority, model) of queued jobs that no message carries yet and that may
        run now (active batch, no retry backoff pending), above ``after_id``, oldest first."""
        now = self.clock()
        with self.session() as s:
            return [(int(j), str(t), int(p), str(m)) for j, t, p, m in s.execute(
                select(Job.id, Batch.tenant, Job.priority, Job.model).join(Batch, Batch.id == Job.batch_id)
                .where(Job.state == states.QUEUED, Job.enqueued_at.is_(None), Job.id > after_id,
                       Batch.state == states.BATCH_ACTIVE,
                       (Job.not_before.is_(None)) | (Job.not_before <= now))
                .order_by(Job.id).limit(limit))]

    def tenants_in_flight(self) -> set[str]:
        """Tenants with jobs published and not finished (waiting in the broker or running)."""
        with self.session() as s:
            published = (select(Job.batch_id).where(Job.state == states.QUEUED, Job.enqueued_at.is_not(None))
                         .union(select(Job.batch_id).where(Job.state == states.RUNNING)).subquery())
            return set(s.scalars(select(Batch.tenant).distinct().where(Batch.id.in_(select(published.c.batch_id)))))

    def fair_tenants(self) -> dict[str, tuple[float, float]]:
        """Every tenant's (weight, virtual finish time)."""
        with self.session() as s:
            return {n: (float(w), float(v or 0.0)) for n, w, v in
                    s.execute(select(Tenant.name, Tenant.weight, Tenant.vfinish))}

    def mark_dispatched(self, lots: Iterable[tuple[list[int], float]], vfinish: dict[str, float]) -> list[list[int]]:
        """In one transaction: mark each lot's jobs published and charge each its estimated GPU
        ms (``lots``: job ids and ms per job), and set the tenants' finish tags. Only jobs still
        queued and unpublished are marked (one cancelled meanwhile is left out); returns, per lot,
        the ids marked."""
        now = self.clock()
        marked: list[list[int]] = []
        with self.transaction() as conn:
            for job_ids, cost_ms in lots:
                result = conn.execute(
                    update(JOBS)
                    .where(JOBS.c.id.in_(job_ids), JOBS.c.state == states.QUEUED,
                           JOBS.c.enqueued_at.is_(None))
                    # a first dispatch replaces the submission's estimate; a job that ran and
                    # was settled (then retried) adds this estimate to what it measured
                    .values(enqueued_at=now, settled=False,
                            cost_ms=case((JOBS.c.settled.is_(True),
                                          func.coalesce(JOBS.c.cost_ms, 0.0) + cost_ms), else_=cost_ms))
                    .returning(JOBS.c.id))
                ids = {int(i) for i in result.scalars()}
                marked.append([i for i in job_ids if i in ids])
            for tenant, tag in vfinish.items():
                conn.execute(update(TENANTS).where(TENANTS.c.name == tenant).values(vfinish=tag))
        return marked

    def settle(self, limit: int = 5000) -> dict[str, float]:
        """Correct tenants' charges by what their finished jobs measured: a job charged an estimate
        at dispatch is charged its attempts' GPU time instead (the difference, over the tenant's
        weight, moves its finish tag). Returns the ms corrected per tenant."""
        with self.transaction() as conn:
            jobs, attempts, batches, tenants = JOBS, ATTEMPTS, BATCHES, TENANTS
            measured = (select(attempts.c.job_id, func.coalesce(func.sum(attempts.c.gpu_ms), 0.0).label("gpu"))
                        .where(attempts.c.outcome != states.ATTEMPT_RUNNING)
                        .group_by(attempts.c.job_id).subquery())
            rows = conn.execute(
                select(jobs.c.id, batches.c.tenant, jobs.c.cost_ms, func.coalesce(measured.c.gpu, 0.0))
                .join(batches, batches.c.id == jobs.c.batch_id)
                .outerjoin(measured, measured.c.job_id == jobs.c.id)
                .where(jobs.c.settled.is_(False), jobs.c.cost_ms.is_not(None),
                       jobs.c.state.in_(sorted(states.TERMINAL)))
                .limit(limit)).all()
            if not rows:
                return {}
            delta: dict[str, float] = {}
            for job_id, tenant, cost, gpu in rows:
                delta[tenant] = delta.get(tenant, 0.0) + float(gpu) - float(cost or 0.0)
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cost_ms=float(gpu), settled=True))
            weights = {n: float(w) for n, w in conn.execute(
                select(tenants.c.name, tenants.c.weight).where(tenants.c.name.in_(list(delta))))}
            for tenant, ms in delta.items():
                conn.execute(update(tenants).where(tenants.c.name == tenant).values(
                    vfinish=tenants.c.vfinish + ms / 1000.0 / max(weights.get(tenant, 1.0), 1e-9)))
            return delta

    def gpu_ms_per_image(self, *, model: str, recipe: str, width: int, height: int, steps: int) -> float | None:
        """Median measured GPU ms per image for these settings (other step counts scaled by
        steps when there is none at this one)."""
        with self.session() as s:
            rows = s.execute(
                select(Attempt.gpu_ms, Job.steps).join(Job, Job.id == Attempt.job_id)
                .where(Job.model == model, Job.recipe == recipe, Job.width == width, Job.height == height,
                       Attempt.outcome == states.ATTEMPT_SUCCEEDED, Attempt.gpu_ms.is_not(None))
                .order_by(Attempt.id.desc()).limit(200)).all()
        return median_at_steps(rows, steps)

    def worker_activity(self) -> dict[str, tuple[str | None, datetime | None]]:
        """Per worker: the model of its latest attempt and, if it is rendering now, when that began."""
        with self.session() as s:
            latest = select(func.max(Attempt.id)).group_by(Attempt.worker)
            rows = s.execute(select(Attempt.worker, Job.model, Attempt.outcome, Attempt.started_at)
                             .join(Job, Job.id == Attempt.job_id).where(Attempt.id.in_(latest))).all()
        return {w: (m, started if outcome == states.ATTEMPT_RUNNING else None) for w, m, outcome, started in rows}

    def unpublish(self, job_ids: list[int]) -> None:
        """Hand queued jobs (retried, resumed) to the dispatcher instead of publishing them."""
        with self.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.state == states.QUEUED).values(enqueued_at=None))
