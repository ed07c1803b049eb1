"""Batches: writing a submission (all or nothing), idempotency keys, reuse of stored images, and
batch-wide control (cancel, retry, pause, resume)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from farm.errors import ConflictError, NotFound, QuotaExceeded
from farm.jobs import events as kinds
from farm.jobs import states
from farm.jobs.spec import JobSpec
from farm.ledger import events
from farm.ledger.mapping import artifact_value, batch_info, spec_columns, stored_job
from farm.ledger.models import ARTIFACTS, BATCHES, JOBS, TENANTS, Artifact, Batch, Job
from farm.ledger.schema import Database
from farm.ledger.values import Artifact as ArtifactValue
from farm.ledger.values import BatchInfo, NewBatch, StoredJob
from farm.tenancy.quotas import Usage, refusal


class Batches(Database):
    def create_batch(
        self, *, specs: list[JobSpec], spec: dict, request_digest: str, base_seed: int,
        priority: int = 0, submitter: str = "", idempotency_key: str | None = None,
        axes: list[dict] | None = None, reuse: dict[int, tuple[int, ArtifactValue]] | None = None,
        enqueued: bool = False, tenant: str = "local", costs_ms: list[float] | None = None,
    ) -> NewBatch:
        """Write a batch and all its jobs in one transaction (all or nothing).

        ``reuse`` maps a job index to (job id, artifact) of an earlier job with the same digest:
        that job is recorded as succeeded from the stored image, without rendering.
        ``enqueued``: the caller publishes the jobs' messages right after this commit, and they
        are recorded as published now, in this transaction (issue 15: one commit less per
        submission, and none racing the workers' first claims); if that publish never happens,
        maintenance finds no message for them past its grace period and publishes them.
        With an idempotency key, the same key returns the existing batch; the same key with a
        different request is a conflict. Keys are the tenant's own: another tenant's same key is
        another batch.
        ``costs_ms``: each job's estimated GPU ms (issue 24): recorded as its charge until it is
        measured, and checked against the tenant's quotas in this same transaction, with the
        tenant's row locked (``reserve``), so concurrent submissions cannot overshoot together.
        """
        reuse = reuse or {}
        if idempotency_key and tenant != "local":  # namespaced; the operator's keys are stored as given
            import hashlib

            idempotency_key = f"{tenant}/{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}"
        if idempotency_key:
            existing = self._batch_for_key(idempotency_key, request_digest)
            if existing:
                return existing
        now = self.clock()
        batch_id = secrets.token_hex(5)
        try:
            # Core inserts, not the ORM's unit of work (issue 15: that was most of a small
            # submission's time); the jobs' ids come back in the order of their rows
            with self.transaction() as conn:
                to_render = [i for i in range(len(specs)) if i not in reuse]
                reserve(conn, tenant, now, images=len(to_render),
                        gpu_ms=sum(costs_ms[i] for i in to_render) if costs_ms else 0.0)
                conn.execute(insert(BATCHES).values(
                    id=batch_id, created_at=now, submitter=submitter, idempotency_key=idempotency_key,
                    request_digest=request_digest, spec=spec, priority=priority,
                    model=specs[0].model, recipe=specs[0].recipe, base_seed=base_seed,
                    job_count=len(specs), state=states.BATCH_ACTIVE, tenant=tenant,
                ))
                rows = [
                    {"batch_id": batch_id, "index": i, **spec_columns(j),
                     "state": states.SUCCEEDED if i in reuse else states.QUEUED,
                     "priority": priority, "attempts": 0, "axes": axes[i] if axes else {},
                     "reused_from": reuse[i][0] if i in reuse else None,
                     "created_at": now, "queued_at": now, "finished_at": now if i in reuse else None,
                     "enqueued_at": now if enqueued and i not in reuse else None,
                     "cost_ms": costs_ms[i] if costs_ms and i not in reuse else None}
                    for i, j in enumerate(specs)
                ]
                ids = list(conn.scalars(insert(JOBS).returning(JOBS.c.id, sort_by_parameter_order=True), rows))
                if reuse:
                    conn.execute(insert(ARTIFACTS), [{"job_id": ids[i], "created_at": now, **artifact.as_dict()}
                                                     for i, (_, artifact) in reuse.items()])
                accepted = {"type": kinds.BATCH_ACCEPTED, "tenant": tenant, "batch_id": batch_id,
                            "body": {"batch": batch_id, "jobs": len(ids), "to_render": len(ids) - len(reuse),
                                     "reused": len(reuse), "model": specs[0].model}}
                events.record(conn, now, [accepted] + (events.finished(conn, [batch_id]) if len(reuse) == len(ids)
                                                      else []))
        except IntegrityError:
            if idempotency_key:  # a concurrent submission with the same key won the race
                existing = self._batch_for_key(idempotency_key, request_digest)
                if existing:
                    return existing
            raise
        return NewBatch(batch_id, True, ids, [ids[i] for i in range(len(ids)) if i not in reuse])

    def _batch_for_key(self, key: str, request_digest: str) -> NewBatch | None:
        with self.session() as s:
            batch = s.scalar(select(Batch).where(Batch.idempotency_key == key))
            if batch is None:
                return None
            if batch.request_digest != request_digest:
                raise ConflictError(
                    f"idempotency key {key!r} was used for a different submission (batch {batch.id})"
                )
            ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch.id).order_by(Job.index)))
            return NewBatch(batch.id, False, ids)

    def get_batch(self, batch_id: str) -> BatchInfo:
        with self.session() as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise NotFound(f"no batch {batch_id!r}")
            return batch_info(batch)

    def batch_status(self, batch_id: str) -> tuple[BatchInfo, dict[str, int], datetime | None]:
        """A batch, its counts per state and when its first job started rendering (for an ETA),
        read in one session (the HTTP API's status route)."""
        with self.session() as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise NotFound(f"no batch {batch_id!r}")
            rows = s.execute(
                select(Job.state, func.count(), func.min(Job.started_at)).where(Job.batch_id == batch_id)
                .group_by(Job.state)
            ).all()
            info = batch_info(batch)
        counts = {state: 0 for state in states.STATES}
        counts.update({state: n for state, n, _ in rows})
        starts = [started for _, _, started in rows if started is not None]
        return info, counts, min(starts) if starts else None

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        self.get_batch(batch_id)
        with self.session() as s:
            rows = s.execute(
                select(Job.state, func.count()).where(Job.batch_id == batch_id).group_by(Job.state)
            ).all()
        counts = {state: 0 for state in states.STATES}
        counts.update({state: n for state, n in rows})
        return counts

    def unfinished_models(self, batch_id: str) -> set[str]:
        """The models of a batch's jobs that still have to render (queued or running)."""
        with self.session() as s:
            return set(s.scalars(select(Job.model).distinct().where(
                Job.batch_id == batch_id, Job.state.in_((states.QUEUED, states.RUNNING)))))

    def mark_enqueued(self, job_ids: Iterable[int]) -> None:
        ids = list(job_ids)
        with self.session() as s:
            s.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=self.clock()))

    def reusable(self, digests: Iterable[str], tenant: str | None = None) -> dict[str, tuple[int, ArtifactValue]]:
        """For each digest with a stored image: (the earliest such job, its artifact). With
        ``tenant``, of that tenant's jobs only: reuse must not tell one tenant what another rendered."""
        wanted = list(dict.fromkeys(digests))
        found: dict[str, tuple[int, ArtifactValue]] = {}
        with self.session() as s:
            for start in range(0, len(wanted), 500):
                query = (select(Job.digest, Job.id, Artifact).join(Artifact, Artifact.job_id == Job.id)
                         .where(Job.digest.in_(wanted[start:start + 500]), Job.state == states.SUCCEEDED)
                         .order_by(Job.id))
                if tenant is not None:
                    query = query.join(Batch, Batch.id == Job.batch_id).where(Batch.tenant == tenant)
                rows = s.execute(query).all()
                for digest, job_id, a in rows:
                    found.setdefault(digest, (job_id, artifact_value(a)))
        return found

    def artifacts(self, batch_id: str) -> list[tuple[StoredJob, ArtifactValue]]:
        """A batch's jobs that have a stored image, in job order."""
        self.get_batch(batch_id)
        with self.session() as s:
            rows = s.execute(
                select(Job, Artifact).join(Artifact, Artifact.job_id == Job.id)
                .where(Job.batch_id == batch_id).order_by(Job.index)
            ).all()
            return [(stored_job(job), artifact_value(artifact)) for job, artifact in rows]

    # -- control --------------------------------------------------------------------------------
    def cancel(self, batch_id: str, *, running: bool = False) -> int:
        """Cancel a batch's queued jobs (and running ones with ``running``); returns how many."""
        self.get_batch(batch_id)
        sources, target = states.transition("cancel")
        allowed = sources if running else sources - {states.RUNNING}
        now = self.clock()
        with self.transaction() as conn:
            rows = conn.execute(update(JOBS).where(JOBS.c.batch_id == batch_id, JOBS.c.state.in_(allowed))
                                .values(state=target, finished_at=now, last_error="cancelled")
                                .returning(JOBS.c.id, JOBS.c.batch_id, JOBS.c.index, JOBS.c.seed)).all()
            if rows:
                tenant = events.batch_tenants(conn, [batch_id]).get(batch_id, "local")
                events.record(conn, now, [events.job_event(kinds.JOB_CANCELLED, tenant, row)
                                          for row in sorted(rows, key=lambda r: r.id)]
                              + events.finished(conn, [batch_id]))
            return len(rows)

    def retry(self, batch_id: str, *, failed_only: bool = False) -> list[int]:
        """Move failed (and, unless ``failed_only``, cancelled) jobs back to queued; their next
        claim opens a new attempt after the old ones. Returns the job ids to publish."""
        self.get_batch(batch_id)
        sources, target = states.transition("retry")
        allowed = {states.FAILED} if failed_only else sources
        now = self.clock()
        with self.session() as s:
            ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.state.in_(allowed))
                                 .order_by(Job.id)))
            if ids:
                s.execute(update(Job).where(Job.id.in_(ids), Job.state.in_(allowed)).values(
                    state=target, queued_at=now, enqueued_at=None, current_attempt=None, started_at=None,
                    finished_at=None))
                tenant = events.batch_tenants(s, [batch_id]).get(batch_id, "local")
                events.record(s, now, [{"type": kinds.BATCH_RETRIED, "tenant": tenant, "batch_id": batch_id,
                                        "body": {"batch": batch_id, "jobs": len(ids), "job_ids": ids[:1000]}}])
        return ids

    def set_batch_state(self, batch_id: str, state: str) -> list[int]:
        """Pause (workers skip its jobs) or resume (returns the queued job ids to publish again)."""
        self.get_batch(batch_id)
        with self.session() as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(state=state))
            if state != states.BATCH_ACTIVE:
                return []
            return list(s.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.state == states.QUEUED)
                                  .order_by(Job.id)))


def reserve(conn, tenant: str, now: datetime, *, images: int, gpu_ms: float) -> None:
    """Refuse (QuotaExceeded) a submission that would take ``tenant`` past a quota; called in the
    transaction that writes it. A tenant with quotas has its row locked first (an UPDATE: a row
    lock on PostgreSQL, the write lock on SQLite), so its submissions are counted one at a time
    and each one's jobs are the reservation the next one sees."""
    limits = conn.scalar(select(TENANTS.c.quotas).where(TENANTS.c.name == tenant))
    if not limits:
        return
    conn.execute(update(TENANTS).where(TENANTS.c.name == tenant).values(weight=TENANTS.c.weight))
    limits = conn.scalar(select(TENANTS.c.quotas).where(TENANTS.c.name == tenant)) or {}
    reason = refusal(tenant, limits, usage_of(conn, tenant, now), images=images, gpu_seconds=gpu_ms / 1000.0)
    if reason:
        raise QuotaExceeded(reason)


def usage_of(conn, tenant: str, now: datetime) -> Usage:
    """What counts against a tenant's quotas now: jobs to render submitted in the last 24 hours
    (not cancelled) and their GPU time (measured where settled, estimated where not), and its jobs
    queued or running."""
    since = now - timedelta(days=1)
    today = select(BATCHES.c.id).where(BATCHES.c.tenant == tenant, BATCHES.c.created_at >= since)
    images_today, ms_today = conn.execute(
        select(func.count(), func.coalesce(func.sum(JOBS.c.cost_ms), 0.0))
        .where(JOBS.c.batch_id.in_(today), JOBS.c.reused_from.is_(None), JOBS.c.state != states.CANCELLED)).one()
    queued = conn.scalar(
        select(func.count()).select_from(JOBS).join(BATCHES, BATCHES.c.id == JOBS.c.batch_id)
        .where(BATCHES.c.tenant == tenant, JOBS.c.state.in_([states.QUEUED, states.RUNNING])))
    return Usage(int(images_today or 0), float(ms_today or 0.0) / 1000.0, int(queued or 0))

