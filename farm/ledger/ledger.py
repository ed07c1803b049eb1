"""The ledger: the farm's source of truth, a thin adapter over SQLAlchemy.

Every state change is a conditional UPDATE (the transition table in ``farm.states`` says from
which states), so a duplicate delivery or a completion from a superseded attempt changes nothing.
SQLite (default) is migrated automatically on first use; PostgreSQL is migrated with
``farm db upgrade``.
"""

from __future__ import annotations

import fcntl
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from farm import states
from farm.errors import ConflictError, InfrastructureError, NotFound
from farm.catalog import BUILTIN_ADAPTERS, BUILTIN_MODELS, AdapterEntry, ModelEntry
from farm.ledger.models import (
    TIMING_FIELDS, Artifact, Attempt, Batch, Job, Lock, RegisteredAdapter, RegisteredModel, Worker,
)
from farm.spec import Catalog, JobSpec

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    token: str  # fencing token: completion must present it
    queued_at: datetime
    started_at: datetime
    job: object = None  # the job's row as claimed (attribute access by column name)


@dataclass(frozen=True)
class NewBatch:
    id: str
    created: bool  # False: an idempotency key returned an existing batch
    job_ids: list[int]
    to_render: list[int] | None = None  # None: all of them


def _entry(cls, row):
    """A catalog entry from its registry row: the same fields, not built in."""
    from dataclasses import fields

    return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name != "builtin"}, builtin=False)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets workers write while the CLI reads; busy_timeout makes writers wait, not fail.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def alembic_config(connection=None):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Ledger:
    def __init__(self, url: str, *, clock: Callable[[], datetime] = utcnow, auto_migrate: bool = True):
        self.url = url
        self.clock = clock
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if auto_migrate:
            self.ensure_schema()

    # -- schema ---------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Apply migrations to a SQLite file on first use; require them on a server database."""
        try:
            head = head_revision()
            if current_revision(self.engine) == head:
                return
            if self.engine.dialect.name == "sqlite":
                db_path = self.url.split("///", 1)[-1]
                # concurrent first users (CLI and workers) must not migrate the same file twice
                lock = Path(db_path + ".migrate.lock") if db_path and db_path != ":memory:" else None
                if lock is None:
                    upgrade(self.engine)
                    return
                with _file_lock(lock):
                    if current_revision(self.engine) != head:
                        upgrade(self.engine)
                return
        except OperationalError as exc:
            raise InfrastructureError(f"cannot open the ledger at {self.safe_url}: {exc.orig}") from None
        raise InfrastructureError(
            f"the ledger at {self.safe_url} is not at schema {head}; run `farm db upgrade`"
        )

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except (IntegrityError, ConflictError, NotFound):
            session.rollback()
            raise
        except OperationalError as exc:
            session.rollback()
            raise InfrastructureError(f"ledger error: {exc.orig}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def transaction(self):
        """A Core connection in a transaction: the hot paths (claim, complete) skip the ORM
        session's bookkeeping, a third of their cost on SQLite."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise InfrastructureError(f"ledger error: {exc.orig}") from None

    # -- batches --------------------------------------------------------------------------------
    def create_batch(
        self, *, specs: list[JobSpec], spec: dict, request_digest: str, base_seed: int,
        priority: int = 0, submitter: str = "", idempotency_key: str | None = None,
        axes: list[dict] | None = None, reuse: dict[int, tuple[int, dict]] | None = None,
    ) -> NewBatch:
        """Write a batch and all its jobs in one transaction (all or nothing).

        ``reuse`` maps a job index to (job id, artifact) of an earlier job with the same digest:
        that job is recorded as succeeded from the stored image, without rendering.
        With an idempotency key, the same key returns the existing batch; the same key with a
        different request is a conflict.
        """
        reuse = reuse or {}
        if idempotency_key:
            existing = self._batch_for_key(idempotency_key, request_digest)
            if existing:
                return existing
        now = self.clock()
        batch_id = secrets.token_hex(5)
        try:
            with self.session() as s:
                s.add(Batch(
                    id=batch_id, created_at=now, submitter=submitter, idempotency_key=idempotency_key,
                    request_digest=request_digest, spec=spec, priority=priority,
                    model=specs[0].model, recipe=specs[0].recipe, base_seed=base_seed,
                    job_count=len(specs), state="active",
                ))
                s.flush()
                jobs = [
                    Job(
                        batch_id=batch_id, index=i, prompt=j.prompt, negative_prompt=j.negative_prompt,
                        seed=j.seed, steps=j.steps, guidance=j.guidance, width=j.width, height=j.height,
                        model=j.model, model_revision=j.model_revision, family=j.family, recipe=j.recipe,
                        scheduler=j.scheduler, scheduler_config=j.scheduler_config,
                        adapters=[{"name": a.name, "weight": a.weight, "role": a.role} for a in j.adapters],
                        decoder=j.decoder, digest=j.digest, state=states.SUCCEEDED if i in reuse else states.QUEUED,
                        priority=priority, attempts=0, axes=(axes[i] if axes else {}),
                        reused_from=reuse[i][0] if i in reuse else None,
                        created_at=now, queued_at=now, finished_at=now if i in reuse else None,
                    )
                    for i, j in enumerate(specs)
                ]
                s.add_all(jobs)
                s.flush()
                ids = [job.id for job in jobs]
                s.add_all(Artifact(job_id=ids[i], created_at=now, **artifact) for i, (_, artifact) in reuse.items())
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

    def get_batch(self, batch_id: str) -> Batch:
        with self.session() as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise NotFound(f"no batch {batch_id!r}")
            return batch

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        self.get_batch(batch_id)
        with self.session() as s:
            rows = s.execute(
                select(Job.state, func.count()).where(Job.batch_id == batch_id).group_by(Job.state)
            ).all()
        counts = {state: 0 for state in states.STATES}
        counts.update({state: n for state, n in rows})
        return counts

    def mark_enqueued(self, job_ids: Iterable[int]) -> None:
        ids = list(job_ids)
        with self.session() as s:
            s.execute(update(Job).where(Job.id.in_(ids)).values(enqueued_at=self.clock()))

    def reusable(self, digests: Iterable[str]) -> dict[str, tuple[int, dict]]:
        """For each digest with a stored image: (the earliest such job, its artifact fields)."""
        wanted = list(dict.fromkeys(digests))
        found: dict[str, tuple[int, dict]] = {}
        with self.session() as s:
            for start in range(0, len(wanted), 500):
                rows = s.execute(
                    select(Job.digest, Job.id, Artifact).join(Artifact, Artifact.job_id == Job.id)
                    .where(Job.digest.in_(wanted[start:start + 500]), Job.state == states.SUCCEEDED)
                    .order_by(Job.id)
                ).all()
                for digest, job_id, a in rows:
                    found.setdefault(digest, (job_id, {
                        "store_url": a.store_url, "key": a.key, "sha256": a.sha256, "bytes": a.bytes,
                        "width": a.width, "height": a.height, "content_type": a.content_type}))
        return found

    def history_ms(self, *, model: str, recipe: str, width: int, height: int, steps: int) -> float | None:
        """Median recorded time per image (total ms) of rendered jobs with these settings; from the
        same model, recipe and size at other step counts, scaled by steps, when there is none."""
        with self.session() as s:
            rows = s.execute(
                select(Attempt.total_ms, Job.steps).join(Job, Job.id == Attempt.job_id)
                .where(Job.model == model, Job.recipe == recipe, Job.width == width, Job.height == height,
                       Attempt.outcome == "succeeded", Attempt.total_ms.is_not(None))
                .order_by(Attempt.id.desc()).limit(500)).all()
        exact = sorted(total for total, n in rows if n == steps)
        if exact:
            return exact[len(exact) // 2]
        per_step = sorted(total / max(1, n) for total, n in rows)
        return per_step[len(per_step) // 2] * steps if per_step else None

    def active_workers(self, within_s: float = 60.0) -> int:
        cutoff = self.clock() - timedelta(seconds=within_s)
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Worker)
                            .where(Worker.state == "active", Worker.last_heartbeat >= cutoff)) or 0

    def batches(self, limit: int = 50) -> list[dict]:
        with self.session() as s:
            batches = list(s.scalars(select(Batch).order_by(Batch.created_at.desc()).limit(limit)))
            ids = [b.id for b in batches]
            counts: dict[str, dict[str, int]] = {i: {st: 0 for st in states.STATES} for i in ids}
            for batch_id, state, n in s.execute(select(Job.batch_id, Job.state, func.count())
                                                .where(Job.batch_id.in_(ids)).group_by(Job.batch_id, Job.state)):
                counts[batch_id][state] = n
        return [{"batch": b.id, "created_at": b.created_at.isoformat(), "state": b.state, "priority": b.priority,
                 "model": b.model, "recipe": b.recipe, "jobs": b.job_count, "counts": counts[b.id],
                 "done": sum(counts[b.id][t] for t in states.TERMINAL)} for b in batches]

    # -- control --------------------------------------------------------------------------------
    def cancel(self, batch_id: str, *, running: bool = False) -> int:
        """Cancel a batch's queued jobs (and running ones with ``running``); returns how many."""
        self.get_batch(batch_id)
        sources, target = states.transition("cancel")
        allowed = sources if running else sources - {states.RUNNING}
        with self.session() as s:
            result = s.execute(update(Job).where(Job.batch_id == batch_id, Job.state.in_(allowed))
                               .values(state=target, finished_at=self.clock(), last_error="cancelled"))
            return result.rowcount

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
        return ids

    def set_batch_state(self, batch_id: str, state: str) -> list[int]:
        """Pause (workers skip its jobs) or resume (returns the queued job ids to publish again)."""
        self.get_batch(batch_id)
        with self.session() as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(state=state))
            if state != "active":
                return []
            return list(s.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.state == states.QUEUED)
                                  .order_by(Job.id)))

    def close_attempts(self, tokens: Iterable[str], *, outcome: str, error: str | None = None) -> None:
        """Record how attempts ended when their jobs were taken away (cancelled, superseded)."""
        with self.session() as s:
            s.execute(update(Attempt).where(Attempt.token.in_(list(tokens)), Attempt.outcome == "running")
                      .values(outcome=outcome, error=error, finished_at=self.clock()))

    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease; False while another holder's lease is live."""
        now = self.clock()
        expires = now + timedelta(seconds=ttl_s)
        with self.session() as s:
            taken = s.execute(update(Lock).where(Lock.name == name, (Lock.expires_at < now) | (Lock.holder == holder))
                              .values(holder=holder, expires_at=expires)).rowcount
            if taken:
                return True
        try:
            with self.session() as s:
                if s.get(Lock, name) is not None:
                    return False
                s.add(Lock(name=name, holder=holder, expires_at=expires))
            return True
        except IntegrityError:
            return False  # another process inserted it first

    def waiting_too_long(self, enqueued_before: datetime, limit: int = 1000) -> list[int]:
        """Queued jobs of active batches whose message has waited since ``enqueued_before`` and
        that are not at the top priority yet (candidates for aging)."""
        from farm.dispatch import MAX_PRIORITY

        with self.session() as s:
            return list(s.scalars(
                select(Job.id).join(Batch, Batch.id == Job.batch_id)
                .where(Job.state == states.QUEUED, Job.enqueued_at < enqueued_before, Job.priority < MAX_PRIORITY,
                       Batch.state == "active")
                .order_by(Job.id).limit(limit)))

    def promote(self, job_ids: list[int]) -> None:
        with self.session() as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.state == states.QUEUED)
                      .values(priority=Job.priority + 1))

    def still_running(self, tokens: Iterable[str]) -> bool:
        """Whether any of these attempts still owns a running job (a cancel or a newer attempt
        takes it away)."""
        with self.session() as s:
            return bool(s.scalar(select(func.count()).select_from(Job).where(
                Job.current_attempt.in_(list(tokens)), Job.state == states.RUNNING)))

    # -- jobs -----------------------------------------------------------------------------------
    def list_jobs(self, batch_id: str | None = None, state: str | None = None, limit: int | None = None,
                  job_id: int | None = None) -> list[dict]:
        """Jobs with their latest attempt's timings and their artifact key, oldest first."""
        with self.session() as s:
            query = select(Job).order_by(Job.id)
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
        return [self._job_row(j, attempts.get(j.id), artifacts.get(j.id)) for j in jobs]

    @staticmethod
    def _job_row(job: Job, attempt: Attempt | None, artifact: Artifact | None) -> dict:
        return {
            "id": job.id, "batch": job.batch_id, "index": job.index, "state": job.state,
            "prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
            "steps": job.steps, "guidance": job.guidance, "width": job.width, "height": job.height,
            "model": job.model, "recipe": job.recipe, "scheduler": job.scheduler,
            "adapters": job.adapters, "decoder": job.decoder, "digest": job.digest, "attempts": job.attempts,
            "axes": job.axes or {}, "reused_from": job.reused_from,
            "last_error": job.last_error,
            "worker": attempt.worker if attempt else None,
            "device": attempt.device if attempt else None,
            "timings": {f[:-3]: getattr(attempt, f) for f in TIMING_FIELDS} if attempt else {},
            "batch_size": attempt.batch_size if attempt else None,
            "environment": attempt.environment if attempt else None,
            "artifact": artifact.key if artifact else None,
            "sha256": artifact.sha256 if artifact else None,
            "store_url": artifact.store_url if artifact else None,
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }

    def load_jobs(self, job_ids: Iterable[int]) -> list[Job]:
        ids = list(job_ids)
        with self.session() as s:
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        return [jobs[i] for i in ids if i in jobs]

    def claim(self, job_ids: Iterable[int], *, worker: str, device: str, lease_s: float) -> list[ClaimedJob]:
        """Move queued jobs to running, each with a new attempt and fencing token; returns them
        with their rows (UPDATE ... RETURNING: no second read).

        A job that is not queued any more (a duplicate delivery, cancelled, done) is skipped.
        """
        now = self.clock()
        sources, target = states.transition("claim")
        claimed: list[ClaimedJob] = []
        active = select(Batch.id).where(Batch.state == "active")  # a paused batch's jobs wait
        with self.transaction() as s:
            for job_id in job_ids:
                token = secrets.token_hex(16)
                row = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state.in_(sources), Job.batch_id.in_(active))
                    .values(state=target, attempts=Job.attempts + 1, current_attempt=token,
                            started_at=now, finished_at=None)
                    .returning(*Job.__table__.c)
                ).first()
                if row is None:
                    continue
                s.execute(insert(Attempt).values(
                    job_id=job_id, token=token, worker=worker, device=device, started_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_s), outcome="running",
                ))
                claimed.append(ClaimedJob(job_id, token, row.queued_at, now, row))
        return claimed

    def _finish(self, event: str, job_id: int, token: str, *, outcome: str, error: str | None,
                timings: dict | None, batch_size: int | None, artifact: dict | None,
                environment: dict | None = None, not_before: datetime | None = None) -> bool:
        """Apply a terminal transition if ``token`` still owns the job; False if it does not."""
        now = self.clock()
        sources, target = states.transition(event)
        with self.transaction() as s:
            values = {"state": target, "finished_at": now if target in states.TERMINAL else None}
            if error is not None:
                values["last_error"] = error[:4000]
            if target == states.QUEUED:
                values.update(queued_at=now, current_attempt=None, started_at=None, enqueued_at=None,
                              not_before=not_before)
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(sources), Job.current_attempt == token)
                .values(**values)
            )
            if result.rowcount != 1:
                # superseded: record what this attempt saw, change nothing else
                s.execute(update(Attempt).where(Attempt.token == token, Attempt.outcome == "running")
                          .values(outcome="superseded", finished_at=now))
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
                s.execute(insert(Artifact).values(job_id=job_id, created_at=now, **artifact))
        return True

    def complete(self, job_id: int, token: str, *, artifact: dict, timings: dict, batch_size: int,
                 environment: dict | None = None) -> bool:
        return self._finish("succeed", job_id, token, outcome="succeeded", error=None,
                            timings=timings, batch_size=batch_size, artifact=artifact, environment=environment)

    def fail(self, job_id: int, token: str, *, error: str, timings: dict | None = None,
             batch_size: int | None = None) -> bool:
        return self._finish("fail", job_id, token, outcome="failed", error=error,
                            timings=timings, batch_size=batch_size, artifact=None)

    def requeue(self, job_id: int, token: str, *, error: str, outcome: str = "requeued",
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
                Attempt.job_id == job_id, Attempt.outcome.in_(("failed", "retry", "lost", "timeout")))) or 0

    def renew_leases(self, tokens: Iterable[str], lease_s: float) -> int:
        with self.session() as s:
            return s.execute(update(Attempt).where(Attempt.token.in_(list(tokens)), Attempt.outcome == "running")
                             .values(lease_expires_at=self.clock() + timedelta(seconds=lease_s))).rowcount

    def expired_leases(self, limit: int = 1000) -> list[tuple[int, str]]:
        """(job id, token) of running jobs whose live attempt's lease has lapsed."""
        with self.session() as s:
            return [(j, t) for j, t in s.execute(
                select(Job.id, Job.current_attempt).join(Attempt, Attempt.token == Job.current_attempt)
                .where(Job.state == states.RUNNING, Attempt.lease_expires_at < self.clock()).limit(limit))]

    def publish_candidates(self, enqueued_before: datetime, limit: int = 5000) -> list[tuple[int, bool]]:
        """(job id, ever published) of queued jobs of active batches that are due (no backoff
        pending) and were never published or published before ``enqueued_before``."""
        now = self.clock()
        with self.session() as s:
            return [(j, e is not None) for j, e in s.execute(
                select(Job.id, Job.enqueued_at).join(Batch, Batch.id == Job.batch_id)
                .where(Job.state == states.QUEUED, Batch.state == "active",
                       (Job.not_before.is_(None)) | (Job.not_before <= now),
                       (Job.enqueued_at.is_(None)) | (Job.enqueued_at < enqueued_before))
                .order_by(Job.id).limit(limit))]

    def artifacts(self, batch_id: str) -> list[tuple[Job, Artifact]]:
        self.get_batch(batch_id)
        with self.session() as s:
            rows = s.execute(
                select(Job, Artifact).join(Artifact, Artifact.job_id == Job.id)
                .where(Job.batch_id == batch_id).order_by(Job.index)
            ).all()
        return [(job, artifact) for job, artifact in rows]

    # -- registries -----------------------------------------------------------------------------
    def add_model(self, entry: ModelEntry, sha256: str | None = None) -> None:
        self._register(RegisteredModel, "model", entry, sha256)

    def add_adapter(self, entry: AdapterEntry, sha256: str | None = None) -> None:
        self._register(RegisteredAdapter, "adapter", entry, sha256)

    def _register(self, table, what: str, entry, sha256: str | None) -> None:
        """A registry row from an entry: the columns are the entry's fields (less ``builtin``)."""
        fields = {k: v for k, v in entry.as_dict().items() if k != "builtin"}
        with self.session() as s:
            if s.get(table, entry.name) is not None:
                raise ConflictError(f"{what} {entry.name} is already registered (remove it first)")
            s.add(table(**{**fields, "sha256": sha256, "created_at": self.clock()}))

    def remove_registered(self, what: str, name: str) -> None:
        table = {"model": RegisteredModel, "adapter": RegisteredAdapter}[what]
        with self.session() as s:
            row = s.get(table, name)
            if row is None:
                builtin = name in (BUILTIN_MODELS if what == "model" else BUILTIN_ADAPTERS)
                raise NotFound(f"{name} is a built-in {what} and cannot be removed" if builtin
                               else f"no registered {what} {name!r}")
            s.delete(row)

    def catalog(self) -> Catalog:
        """Built-in models and adapters plus the registered ones."""
        with self.session() as s:
            models = dict(BUILTIN_MODELS)
            for m in s.scalars(select(RegisteredModel)):
                models[m.name] = _entry(ModelEntry, m)
            adapters = dict(BUILTIN_ADAPTERS)
            for a in s.scalars(select(RegisteredAdapter)):
                adapters[a.name] = _entry(AdapterEntry, a)
        return Catalog(models=models, adapters=adapters)

    # -- workers --------------------------------------------------------------------------------
    def register_worker(self, *, name: str, host: str, pid: int, device: str, gpu_name: str | None,
                        versions: dict) -> None:
        now = self.clock()
        with self.session() as s:
            worker = s.get(Worker, name)
            if worker is None:
                worker = Worker(name=name)
                s.add(worker)
            worker.host, worker.pid, worker.device, worker.gpu_name = host, pid, device, gpu_name
            worker.started_at = worker.last_heartbeat = now
            worker.state, worker.versions = "active", versions
            worker.resident_models, worker.resident_adapters = [], []
            worker.current_job, worker.last_error = None, None
            if worker.images_rendered is None:
                worker.images_rendered = 0

    def heartbeat(self, name: str, *, resident_models: list | None = None,
                  resident_adapters: list | None = None, current_job: int | None | object = ...,
                  rendered: int = 0, error: str | None = None, state: str | None = None) -> None:
        """Record that a worker is alive; fields left out keep their values."""
        values: dict = {"last_heartbeat": self.clock()}
        if current_job is not ...:
            values["current_job"] = current_job
        if resident_models is not None:
            values["resident_models"] = resident_models
        if resident_adapters is not None:
            values["resident_adapters"] = resident_adapters
        if rendered:
            values["images_rendered"] = Worker.images_rendered + rendered
        if error is not None:
            values["last_error"] = error[:4000]
        if state is not None:
            values["state"] = state
        with self.session() as s:
            s.execute(update(Worker).where(Worker.name == name).values(**values))

    def attempt_rows(self, since: datetime) -> list[dict]:
        """Finished attempts since ``since``, with their job's model and recipe, for stats."""
        with self.session() as s:
            rows = s.execute(
                select(Attempt, Job.model, Job.recipe).join(Job, Job.id == Attempt.job_id)
                .where(Attempt.finished_at >= since, Attempt.outcome != "running")
                .order_by(Attempt.finished_at)).all()
        return [{"outcome": a.outcome, "finished_at": a.finished_at, "started_at": a.started_at, "model": model,
                 "recipe": recipe, "device": a.device, "worker": a.worker, "batch_size": a.batch_size,
                 **{f[:-3]: getattr(a, f) for f in TIMING_FIELDS}} for a, model, recipe in rows]

    def worker_state(self, name: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(Worker.state).where(Worker.name == name))

    def set_worker_state(self, name: str, state: str) -> None:
        with self.session() as s:
            if s.execute(update(Worker).where(Worker.name == name).values(state=state)).rowcount != 1:
                raise NotFound(f"no worker {name!r} (see `farm workers`)")

    def workers(self) -> list[Worker]:
        with self.session() as s:
            return list(s.scalars(select(Worker).order_by(Worker.name)))


__all__ = ["Ledger", "ClaimedJob", "NewBatch", "upgrade", "head_revision", "current_revision",
           "make_engine", "utcnow"]
