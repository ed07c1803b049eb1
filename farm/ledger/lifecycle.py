"""The job lifecycle: claim, complete, fail, requeue, leases, and what maintenance asks for.

Every state change is a conditional UPDATE (``farm.jobs.states`` says from which states), so a
duplicate delivery or a completion from a superseded attempt changes nothing. Claim and
completion are the hot paths: Core statements, one transaction, ``UPDATE ... RETURNING``.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Iterable

from sqlalchemy import bindparam, case, delete, func, insert, select, update

from farm.jobs import events as kinds
from farm.jobs import states
from farm.ledger import events
from farm.ledger.mapping import stored_job
from farm.ledger.models import ARTIFACTS, ATTEMPTS, JOBS, TIMING_FIELDS, Artifact, Attempt, Batch, Job
from farm.ledger.schema import Database
from farm.ledger.values import Artifact as ArtifactValue
from farm.ledger.values import Claim, Completion, StoredJob

INSERT_ATTEMPTS = insert(ATTEMPTS)
INSERT_ARTIFACTS = insert(ARTIFACTS)


def _now_param():
    return bindparam("now", type_=JOBS.c.started_at.type)  # UTC-aware in, per backend out


def _token_case(rows: int):
    """``CASE jobs.id WHEN :job_0 THEN :token_0 ...``: each of ``rows`` jobs its own token."""
    return case({bindparam(f"job_{i}", type_=JOBS.c.id.type): bindparam(f"token_{i}", type_=JOBS.c.current_attempt.type)
                 for i in range(rows)}, value=JOBS.c.id)


def _token_params(tokens: dict[int, str]) -> dict:
    params: dict = {}
    for i, (job_id, token) in enumerate(tokens.items()):
        params[f"job_{i}"], params[f"token_{i}"] = job_id, token
    return params


# The hot paths' statements are built once per micro-batch size and executed with new values
# (issue 15): building them (a CASE of one branch per job, IN lists, ORM coercions) and deriving
# their cache keys was a third of a worker's CPU spent on the ledger.
@lru_cache(maxsize=128)
def _claim_statement(rows: int):
    sources, target = states.transition("claim")
    active = select(Batch.id).where(Batch.state == states.BATCH_ACTIVE)  # a paused batch's jobs wait
    return (update(JOBS)
            .where(JOBS.c.id.in_(bindparam("ids", expanding=True)), JOBS.c.state.in_(sorted(sources)),
                   JOBS.c.batch_id.in_(active))
            .values(state=target, attempts=JOBS.c.attempts + 1, current_attempt=_token_case(rows),
                    started_at=_now_param(), finished_at=None)
            .returning(*JOBS.c))


@lru_cache(maxsize=128)
def _complete_statement(rows: int):
    sources, target = states.transition("succeed")
    return (update(JOBS)
            .where(JOBS.c.id.in_(bindparam("ids", expanding=True)), JOBS.c.state.in_(sorted(sources)),
                   JOBS.c.current_attempt == _token_case(rows))
            .values(state=target, finished_at=_now_param())
            .returning(JOBS.c.id, JOBS.c.batch_id, JOBS.c.index, JOBS.c.seed))


SUCCEED_ATTEMPTS = update(ATTEMPTS).where(ATTEMPTS.c.token == bindparam("b_token"))
DELETE_ARTIFACTS = delete(ARTIFACTS).where(ARTIFACTS.c.job_id.in_(bindparam("ids", expanding=True)))


class Lifecycle(Database):
    def load_jobs(self, job_ids: Iterable[int]) -> list[StoredJob]:
        ids = list(job_ids)
        with self.session() as s:
            jobs = {j.id: stored_job(j) for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        return [jobs[i] for i in ids if i in jobs]

    def claim(self, job_ids: Iterable[int], *, worker: str, device: str, lease_s: float) -> list[Claim]:
        """Move queued jobs to running, each with a new attempt and fencing token; returns them
        with their specs (UPDATE ... RETURNING: no second read).

        A job that is not queued any more (a duplicate delivery, cancelled, done) is skipped.
        Two statements for the whole micro-batch, whatever its size (issue 15: the ledger's cost
        per image at fleet scale): one UPDATE gives each job its own token (a CASE on the id),
        one multi-row INSERT records the attempts.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        now = self.clock()
        tokens = {job_id: secrets.token_hex(16) for job_id in ids}
        with self.transaction() as s:
            rows = s.execute(_claim_statement(len(ids)), {"ids": ids, "now": now, **_token_params(tokens)}).all()
            if not rows:
                return []
            expires = now + timedelta(seconds=lease_s)
            s.execute(INSERT_ATTEMPTS, [
                {"job_id": row.id, "token": row.current_attempt, "worker": worker, "device": device,
                 "started_at": now, "lease_expires_at": expires, "outcome": states.ATTEMPT_RUNNING}
                for row in rows])
        order = {job_id: i for i, job_id in enumerate(ids)}
        return [Claim(stored_job(row), row.current_attempt, now) for row in sorted(rows, key=lambda r: order[r.id])]

    def _finish(self, event: str, job_id: int, token: str, *, outcome: str, error: str | None,
                timings: dict | None, batch_size: int | None, artifact: ArtifactValue | None,
                environment: dict | None = None, not_before: datetime | None = None) -> bool:
        """Apply a terminal transition if ``token`` still owns the job; False if it does not."""
        with self.transaction() as s:
            return self._apply(s, event, job_id, token, outcome=outcome, error=error, timings=timings,
                               batch_size=batch_size, artifact=artifact, environment=environment,
                               not_before=not_before)

    def _apply(self, s, event: str, job_id: int, token: str, *, outcome: str, error: str | None,
               timings: dict | None, batch_size: int | None, artifact: ArtifactValue | None,
               environment: dict | None = None, not_before: datetime | None = None) -> bool:
        """One job's transition inside the caller's transaction (see ``_finish``)."""
        now = self.clock()
        sources, target = states.transition(event)
        values = {"state": target, "finished_at": now if target in states.TERMINAL else None}
        if error is not None:
            values["last_error"] = error[:4000]
        if target == states.QUEUED:
            values.update(queued_at=now, current_attempt=None, started_at=None, enqueued_at=None,
                          not_before=not_before)
        changed = s.execute(
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.state.in_(sources), JOBS.c.current_attempt == token)
            .values(**values).returning(JOBS.c.id, JOBS.c.batch_id, JOBS.c.index, JOBS.c.seed)
        ).first()
        if changed is None:
            # superseded: record what this attempt saw, change nothing else
            s.execute(update(Attempt).where(Attempt.token == token, Attempt.outcome == states.ATTEMPT_RUNNING)
                      .values(outcome=states.ATTEMPT_SUPERSEDED, finished_at=now))
            return False
        attempt_values = {"outcome": outcome, "finished_at": now, "error": error, "batch_size": batch_size}
        if environment is not None:
            attempt_values["environment"] = environment
        for name, value in (timings or {}).items():
            if name in TIMING_FIELDS:
                attempt_values[name] = value
        s.execute(update(Attempt).where(Attempt.token == token).values(**attempt_values))
        if artifact is not None:  # deterministic keys: a re-render replaces the row, never adds one
            s.execute(delete(Artifact).where(Artifact.job_id == job_id))
            s.execute(insert(Artifact).values(job_id=job_id, created_at=now, **artifact.as_dict()))
        self._record_finish(s, now, changed, target, outcome=outcome, error=error, artifact=artifact)
        return True

    def _record_finish(self, s, now, row, target: str, *, outcome: str, error: str | None,
                       artifact: ArtifactValue | None) -> None:
        """The events of one job's transition, last in its transaction (farm.ledger.events)."""
        tenant = events.batch_tenants(s, [row.batch_id]).get(row.batch_id, "local")
        rows = []
        if outcome == states.ATTEMPT_LOST:
            rows.append(events.job_event(kinds.WORKER_LOST, tenant, row, requeued=target == states.QUEUED))
        if target == states.SUCCEEDED:
            rows.append(events.job_event(kinds.JOB_SUCCEEDED, tenant, row, key=artifact and artifact.key,
                                         sha256=artifact and artifact.sha256))
        elif target == states.FAILED:
            rows.append(events.job_event(kinds.JOB_FAILED, tenant, row, error=(error or "")[:500]))
        if target in states.TERMINAL:
            rows += events.finished(s, [row.batch_id])
        events.record(s, now, rows)

    def complete_many(self, done: list[Completion]) -> list[bool]:
        """Complete a micro-batch's jobs in one transaction of set-based statements (issue 15: a
        handful per micro-batch, not four per image); each is still a compare-and-set on its
        token, and a superseded attempt changes nothing but its own attempt's outcome."""
        if not done:
            return []
        now = self.clock()
        tokens = {c.job_id: c.token for c in done}
        with self.transaction() as s:
            changed = s.execute(_complete_statement(len(tokens)),
                                {"ids": list(tokens), "now": now, **_token_params(tokens)}).all()
            won = {row.id for row in changed}
            lost = [c.token for c in done if c.job_id not in won]
            if lost:  # superseded: record what these attempts saw, change nothing else
                s.execute(update(Attempt).where(Attempt.token.in_(lost), Attempt.outcome == states.ATTEMPT_RUNNING)
                          .values(outcome=states.ATTEMPT_SUPERSEDED, finished_at=now))
            ours = [c for c in done if c.job_id in won]
            if ours:
                s.execute(SUCCEED_ATTEMPTS, [
                    {"b_token": c.token, "outcome": states.ATTEMPT_SUCCEEDED, "finished_at": now, "error": None,
                     "batch_size": c.batch_size, "environment": c.environment,
                     **{name: c.timings.get(name) for name in TIMING_FIELDS}} for c in ours])
                # deterministic keys: a re-render replaces the row, never adds one
                s.execute(DELETE_ARTIFACTS, {"ids": [c.job_id for c in ours]})
                s.execute(INSERT_ARTIFACTS, [{"job_id": c.job_id, "created_at": now, **c.artifact.as_dict()}
                                             for c in ours])
                # the outbox, last: a job.succeeded per image, and batch.finished for a batch done now
                artifacts = {c.job_id: c.artifact for c in ours}
                tenants = events.batch_tenants(s, {row.batch_id for row in changed})
                rows = [events.job_event(kinds.JOB_SUCCEEDED, tenants.get(row.batch_id, "local"), row,
                                         key=artifacts[row.id].key, sha256=artifacts[row.id].sha256)
                        for row in sorted(changed, key=lambda r: r.id)]
                events.record(s, now, rows + events.finished(s, tenants))
        return [c.job_id in won for c in done]

    def complete(self, job_id: int, token: str, *, artifact: ArtifactValue, timings: dict, batch_size: int,
                 environment: dict | None = None) -> bool:
        return self._finish("succeed", job_id, token, outcome=states.ATTEMPT_SUCCEEDED, error=None,
                            timings=timings, batch_size=batch_size, artifact=artifact, environment=environment)

    def fail(self, job_id: int, token: str, *, error: str, timings: dict | None = None,
             batch_size: int | None = None) -> bool:
        return self._finish("fail", job_id, token, outcome=states.ATTEMPT_FAILED, error=error,
                            timings=timings, batch_size=batch_size, artifact=None)

    def requeue(self, job_id: int, token: str, *, error: str, outcome: str = states.ATTEMPT_REQUEUED,
                delay_s: float = 0.0) -> bool:
        """Give a running job back to the queue. It is published again by the caller or, after
        ``delay_s`` (a retry's backoff), by the fleet's maintenance."""
        not_before = self.clock() + timedelta(seconds=delay_s) if delay_s else None
        return self._finish("requeue", job_id, token, outcome=outcome, error=error, timings=None,
                            batch_size=None, artifact=None, not_before=not_before)

    def fail_attempt(self, job_id: int, token: str, *, error: str, outcome: str) -> bool:
        """Fail a job for good, recording how its last attempt ended (failed, lost, ...)."""
        return self._finish("fail", job_id, token, outcome=outcome, error=error, timings=None, batch_size=None,
                            artifact=None)

    def failures(self, job_id: int) -> int:
        """Attempts of a job that ended badly (a drained or cancelled attempt does not count)."""
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Attempt).where(
                Attempt.job_id == job_id, Attempt.outcome.in_(states.FAILED_OUTCOMES))) or 0

    def close_attempts(self, tokens: Iterable[str], *, outcome: str, error: str | None = None) -> None:
        """Record how attempts ended when their jobs were taken away (cancelled, superseded)."""
        with self.session() as s:
            s.execute(update(Attempt).where(Attempt.token.in_(list(tokens)), Attempt.outcome == states.ATTEMPT_RUNNING)
                      .values(outcome=outcome, error=error, finished_at=self.clock()))

    def running_tokens(self, tokens: Iterable[str]) -> set[str]:
        """Those of these attempts that still own a running job (a cancel or a newer attempt takes
        a job away, and a token that lost its job never gets it back)."""
        with self.session() as s:
            return set(s.scalars(select(Job.current_attempt).where(
                Job.current_attempt.in_(list(tokens)), Job.state == states.RUNNING)))

    # -- leases and maintenance -----------------------------------------------------------------
    def renew_leases(self, tokens: Iterable[str], lease_s: float) -> set[str]:
        """Extend the leases of these attempts whose jobs are still theirs and running, and return
        those tokens: one statement renews and answers the worker's "was I cancelled?" question
        (issue 15: a poll of its own was most of a worker's transactions during renders)."""
        owned = select(Job.id).where(Job.id == Attempt.job_id, Job.current_attempt == Attempt.token,
                                     Job.state == states.RUNNING).exists()
        with self.session() as s:
            return set(s.scalars(update(Attempt).where(Attempt.token.in_(list(tokens)),
                                                       Attempt.outcome == states.ATTEMPT_RUNNING, owned)
                                 .values(lease_expires_at=self.clock() + timedelta(seconds=lease_s))
                                 .returning(Attempt.token)))

    def expired_leases(self, limit: int = 1000) -> list[tuple[int, str]]:
        """(job id, token) of running jobs whose live attempt's lease has lapsed."""
        with self.session() as s:
            return [(j, t) for j, t in s.execute(  # a running job always has its attempt's token
                select(Job.id, Job.current_attempt).join(Attempt, Attempt.token == Job.current_attempt)
                .where(Job.state == states.RUNNING, Attempt.lease_expires_at < self.clock()).limit(limit))
                if t is not None]

    def publish_candidates(self, enqueued_before: datetime, limit: int = 5000) -> list[tuple[int, bool]]:
        """(job id, ever published) of queued jobs of active batches that are due (no backoff
        pending) and were never published or published before ``enqueued_before``."""
        now = self.clock()
        with self.session() as s:
            return [(j, e is not None) for j, e in s.execute(
                select(Job.id, Job.enqueued_at).join(Batch, Batch.id == Job.batch_id)
                .where(Job.state == states.QUEUED, Batch.state == states.BATCH_ACTIVE,
                       (Job.not_before.is_(None)) | (Job.not_before <= now),
                       (Job.enqueued_at.is_(None)) | (Job.enqueued_at < enqueued_before))
                .order_by(Job.id).limit(limit))]

    def waiting_too_long(self, enqueued_before: datetime, limit: int = 1000, unpublished: bool = False) -> list:
        """Queued jobs of active batches whose message has waited since ``enqueued_before`` and
        that are not at the top priority yet (candidates for aging). ``unpublished``: instead,
        (id, queued_at, levels it was raised above its batch's priority) of jobs no message
        carries yet (fair share) queued before then."""
        if unpublished:
            with self.session() as s:
                return [(j, q, p - bp) for j, q, p, bp in s.execute(
                    select(Job.id, Job.queued_at, Job.priority, Batch.priority).join(Batch, Batch.id == Job.batch_id)
                    .where(Job.state == states.QUEUED, Job.enqueued_at.is_(None), Job.queued_at < enqueued_before,
                           Job.priority < states.MAX_PRIORITY, Batch.state == states.BATCH_ACTIVE)
                    .order_by(Job.id).limit(limit))]
        waited = Job.enqueued_at < enqueued_before
        with self.session() as s:
            return list(s.scalars(
                select(Job.id).join(Batch, Batch.id == Job.batch_id)
                .where(Job.state == states.QUEUED, waited,
                       Job.priority < states.MAX_PRIORITY, Batch.state == states.BATCH_ACTIVE)
                .order_by(Job.id).limit(limit)))

    def promote(self, job_ids: list[int]) -> None:
        with self.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.state == states.QUEUED)
                      .values(priority=Job.priority + 1))
