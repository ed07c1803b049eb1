"""The fleet: workers (registration, heartbeats, drain/cordon states) and named locks."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from farm.errors import NotFound
from farm.jobs import states
from farm.ledger.mapping import worker_info
from farm.ledger.models import Lock, Worker
from farm.ledger.schema import Database, rowcount
from farm.ledger.values import WorkerInfo


class Fleet(Database):
    def register_worker(self, *, name: str, host: str, pid: int, device: str, gpu_name: str | None,
                        versions: dict, models: list[str] | None = None) -> None:
        """``models``: the models it serves (None or ["*"]: every model)."""
        now = self.clock()
        with self.session() as s:
            worker = s.get(Worker, name)
            if worker is None:
                worker = Worker(name=name)
                s.add(worker)
            worker.host, worker.pid, worker.device, worker.gpu_name = host, pid, device, gpu_name
            worker.started_at = worker.last_heartbeat = now
            worker.state, worker.versions = states.WORKER_ACTIVE, versions
            worker.models = list(models) if models else ["*"]
            worker.resident_models, worker.resident_adapters = [], []
            worker.current_job, worker.last_error = None, None
            if worker.images_rendered is None:
                worker.images_rendered = 0

    def heartbeat(self, name: str, *, resident_models: list | None = None,
                  resident_adapters: list | None = None, current_job: int | None | object = ...,
                  rendered: int = 0, error: str | None = None, state: str | None = None,
                  busy_ms: float | None = None) -> None:
        """Record that a worker is alive; fields left out keep their values. ``busy_ms``: its
        time in pipeline calls since it started (a running total)."""
        values: dict = {"last_heartbeat": self.clock()}
        if busy_ms is not None:
            values["busy_ms"] = busy_ms
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

    def worker_state(self, name: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(Worker.state).where(Worker.name == name))

    def set_worker_state(self, name: str, state: str) -> None:
        with self.session() as s:
            if rowcount(s.execute(update(Worker).where(Worker.name == name).values(state=state))) != 1:
                raise NotFound(f"no worker {name!r} (see `farm workers`)")

    def workers(self) -> list[WorkerInfo]:
        with self.session() as s:
            return [worker_info(w) for w in s.scalars(select(Worker).order_by(Worker.name))]

    def active_workers(self, within_s: float = 60.0) -> int:
        cutoff = self.clock() - timedelta(seconds=within_s)
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Worker)
                            .where(Worker.state == states.WORKER_ACTIVE, Worker.last_heartbeat >= cutoff)) or 0

    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease; False while another holder's lease is live."""
        now = self.clock()
        expires = now + timedelta(seconds=ttl_s)
        with self.session() as s:
            taken = rowcount(s.execute(
                update(Lock).where(Lock.name == name, (Lock.expires_at < now) | (Lock.holder == holder))
                .values(holder=holder, expires_at=expires)))
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
