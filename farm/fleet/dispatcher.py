"""The fair-share dispatcher (issue 24): publishes micro-batches late, a few ahead of each worker,
in the order ``farm.fleet.fairshare`` decides.

With ``FARM_SCHEDULER=fair`` a submission writes its jobs and publishes nothing; one dispatcher at
a time (the holder of the ledger's ``dispatch`` lock: `farm dispatch`, or a thread in any worker)
reads the jobs waiting to be published, the tenants' weights and finish tags and the live
workers, and gives each worker with a free slot its next micro-batch, on the worker's own queue
(``<queue>.@<worker>``, which it consumes beside its models' queues). Order is decided here,
late, so a 50,000-job batch submitted first does not fix the order for hours.

Crash safety: jobs are marked published and charged in one transaction before their message is
sent. A dispatcher killed after the commit leaves marked jobs without a message; the reconciler
publishes them to their model's queue past its grace period. A message for a job that another
path already ran is a no-op at claim. The lock's short lease lets another dispatcher take over
within seconds; it rebuilds its view from the ledger.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from farm.fleet import fairshare
from farm.fleet.costs import CostModel
from farm.jobs.spec import JobSpec

log = logging.getLogger("farm.dispatch")

LOCK = "dispatch"
LOCK_TTL_S = 6.0
RENEW_EVERY_S = 1.0
FULL_REFRESH_S = 10.0  # re-read every waiting job (retries, resumes, promotions, cancellations)
WORKERS_EVERY_S = 1.0  # re-read the live workers
REPORT_EVERY_S = 60.0  # log what dispatching cost
SETTLE_EVERY_S = 1.0
SWEEP_EVERY_S = 5.0  # drop the queues of workers that are gone
WORKER_FRESH_S = 30.0  # a worker without a heartbeat this long gets nothing new
MAX_URGENT = 9  # farm priority of an urgent micro-batch: the head of the worker's queue
HOLD_S = 30.0  # a model that had work this recently keeps one worker


def worker_queue(base: str, worker: str) -> str:
    """A worker's own queue: what the dispatcher gives that one worker."""
    return f"{base}.@{worker}"


class Dispatcher:
    def __init__(self, ledger, publisher, config, *, holder: str, clock: Callable[[], float] = time.monotonic):
        self.ledger = ledger
        self.publisher = publisher
        self.config = config
        self.holder = holder
        self.clock = clock
        self.leader = False
        self._reset()

    def _reset(self) -> None:
        self.pending: dict[str, dict[int, int]] = {}  # tenant -> {job id: priority}
        self.models: dict[int, str] = {}  # job id -> its model
        self.order: dict[str, list[tuple[int, int]]] = {}  # tenant -> (-priority, id), sorted (lazily)
        self.unsorted: set[str] = set()  # tenants whose order needs sorting again
        self.per_model: dict[str, dict[str, int]] = {}  # tenant -> model -> jobs waiting
        self.live: list | None = None
        self.live_read = float("-inf")
        self.rounds, self.round_s, self.reported = 0, 0.0, self.clock()
        self.allocation: dict[str, int] | None = None  # workers per model, as last decided
        self.specs: dict[int, JobSpec] = {}
        self.seen_id = 0
        self.current: dict[str, str] = {}  # worker -> the model it was last given
        self.busy_until: dict[str, float] = {}
        self.held: dict[str, float] = {}  # model -> when it last got a micro-batch
        self.backlogged: set[str] | None = None  # tenants with work waiting, as of the last round
        self.costs = CostModel(self.ledger, clock=self.clock)
        self.renewed = self.refreshed = self.settled = self.swept = float("-inf")

    # -- one round ----------------------------------------------------------------------------------
    def round(self) -> dict | None:
        """Publish what the free workers should take next; None while another process leads."""
        began = self.clock()
        try:
            return self._round()
        finally:
            self.rounds += 1
            self.round_s += self.clock() - began
            if began - self.reported >= REPORT_EVERY_S and self.leader:
                log.info("dispatch: %d rounds in %.0f s, %.1f ms each", self.rounds, began - self.reported,
                         1000 * self.round_s / max(1, self.rounds))
                self.rounds, self.round_s, self.reported = 0, 0.0, began

    def _round(self) -> dict | None:
        now = self.clock()
        if not self.leader or now - self.renewed >= RENEW_EVERY_S:
            leader = self.ledger.acquire_lock(LOCK, self.holder, ttl_s=LOCK_TTL_S)
            if leader and not self.leader:
                log.info("dispatching (holder %s)", self.holder)
                self._reset()
            if not leader:
                self.leader = False
                return None
            self.leader, self.renewed = True, now
        done = {"published": 0, "jobs": 0, "urgent": 0}
        if now - self.settled >= SETTLE_EVERY_S:
            self.ledger.settle()
            self.settled = now
        self._refresh(now)
        workers = self._workers(now)
        if now - self.swept >= SWEEP_EVERY_S:
            self._sweep(workers)
            self.swept = now
        if not workers or not any(self.pending.values()):
            return done
        waiting = self.publisher.waiting_each([worker_queue(self.config.queue, w.name) for w in workers])
        for view in workers:
            view.waiting = waiting.get(worker_queue(self.config.queue, view.name), 0)
        free = sum(max(0, self.config.dispatch_ahead - w.waiting) for w in workers)
        # active: backlogged when last looked (or in flight now); the others are arriving
        waiting_now = {t for t, jobs in self.pending.items() if jobs}
        before = self.backlogged if self.backlogged is not None else waiting_now
        self.backlogged = waiting_now
        if not free and not (waiting_now - before):
            return done  # nothing to give and nobody new: no more reads this round
        active = self.ledger.tenants_in_flight() | before
        lots = self._lots(slots=free + len(workers))
        fair = self.ledger.fair_tenants()
        tenants = {t: fairshare.TenantView(t, fair.get(t, (1.0, 0.0))[0], fair.get(t, (1.0, 0.0))[1], t in active)
                   for t in set(fair) | set(lots)}
        held = {m for m, at in self.held.items() if now - at < HOLD_S}
        plan = fairshare.assign(lots, tenants, workers, ahead=self.config.dispatch_ahead, held=held,
                                backlog=self._backlog(lots), previous=self.allocation)
        self.allocation = plan.allocation or self.allocation
        if not plan.assignments:
            return done
        marked = self.ledger.mark_dispatched(
            [(list(a.lot.job_ids), a.lot.cost_s * 1000 / len(a.lot.job_ids)) for a in plan.assignments], plan.vfinish)
        for assignment, ids in zip(plan.assignments, marked):
            for job_id in assignment.lot.job_ids:
                self._forget(assignment.lot.tenant, job_id)
            if not ids:
                continue
            self.publisher.publish_to(worker_queue(self.config.queue, assignment.worker), ids,
                                      priority=MAX_URGENT if assignment.urgent else assignment.lot.priority)
            self.current[assignment.worker] = assignment.lot.model
            ends = max(now, self.busy_until.get(assignment.worker, now))
            self.busy_until[assignment.worker] = ends + assignment.lot.cost_s
            self.held[assignment.lot.model] = now
            done["published"] += 1
            done["jobs"] += len(ids)
            done["urgent"] += int(assignment.urgent)
        return done

    def run(self, stop, interval_s: float = 0.05) -> None:
        """Rounds until ``stop`` (a threading.Event) is set; a failed round is logged and retried."""
        while not stop.is_set():
            try:
                done = self.round()
            except Exception as exc:  # noqa: BLE001 - the ledger or broker is away: try again
                log.warning("dispatch round failed: %s", exc)
                self.leader = False
                done = None
            stop.wait(interval_s if done is not None else RENEW_EVERY_S)

    # -- what is waiting ----------------------------------------------------------------------------
    def _refresh(self, now: float) -> None:
        if now - self.refreshed >= FULL_REFRESH_S:
            rows = self.ledger.undispatched()
            self.pending, self.order, self.per_model = {}, {}, {}
            self.refreshed = now
        else:
            rows = self.ledger.undispatched(after_id=self.seen_id)
        for job_id, tenant, priority, model in rows:
            jobs = self.pending.setdefault(tenant, {})
            if job_id in jobs:
                continue
            jobs[job_id] = priority
            self.models[job_id] = model
            self.order.setdefault(tenant, []).append((-priority, job_id))
            self.unsorted.add(tenant)
            counts = self.per_model.setdefault(tenant, {})
            counts[model] = counts.get(model, 0) + 1
            self.seen_id = max(self.seen_id, job_id)
        live = {j for jobs in self.pending.values() for j in jobs}
        if len(self.specs) > 4 * len(live) + 10_000:
            self.specs = {j: s for j, s in self.specs.items() if j in live}
        if len(self.models) > 2 * len(live) + 10_000:
            self.models = {j: m for j, m in self.models.items() if j in live}

    def _forget(self, tenant: str, job_id: int) -> None:
        if self.pending.get(tenant, {}).pop(job_id, None) is not None:
            counts = self.per_model.get(tenant, {})
            model = self.models.get(job_id, "")
            if counts.get(model):
                counts[model] -= 1

    def _head(self, tenant: str, want: int) -> list[tuple[int, int]]:
        """The tenant's first ``want`` waiting jobs, (id, priority), in priority-then-age order."""
        jobs = self.pending[tenant]
        order = self.order.setdefault(tenant, [])
        if tenant in self.unsorted:
            order.sort()
            self.unsorted.discard(tenant)
        head, gone = [], 0
        for negative, job_id in order:
            if jobs.get(job_id) == -negative:
                head.append((job_id, -negative))
                if len(head) == want:
                    break
            else:
                gone += 1  # dispatched or re-prioritised since: dropped when there are many
        if gone > 1000 and gone > len(head):
            self.order[tenant] = [(n, j) for n, j in order if jobs.get(j) == -n]
        return head

    def _lots(self, slots: int) -> dict[str, list[fairshare.Lot]]:
        """Each tenant's next micro-batches: its first jobs in priority-then-age order, grouped by
        identical settings (as at submission) into whole micro-batches."""
        want = max(1, slots) * self.config.micro_batch
        out: dict[str, list[fairshare.Lot]] = {}
        for tenant, jobs in self.pending.items():
            if not jobs:
                continue
            head = self._head(tenant, want)
            missing = [j for j, _ in head if j not in self.specs]
            if missing:
                for job in self.ledger.load_jobs(missing):
                    self.specs[job.id] = job.spec
            groups: dict[tuple, list[tuple[int, int]]] = {}
            for job_id, priority in head:
                spec = self.specs.get(job_id)
                if spec is None:  # gone from the ledger
                    self._forget(tenant, job_id)
                    continue
                groups.setdefault((priority, spec.group_key), []).append((job_id, priority))
            more_beyond = len(jobs) > len(head)
            lots = []
            for (priority, _), members in groups.items():
                spec = self.specs[members[0][0]]
                size = max(1, self.config.micro_batch_for(spec.family, spec.width, spec.height))
                for i in range(0, len(members), size):
                    chunk = members[i:i + size]
                    if len(chunk) < size and more_beyond:
                        break  # the rest of this group may be beyond the head: keep micro-batches whole
                    ids = tuple(j for j, _ in chunk)
                    lots.append(fairshare.Lot(tenant, spec.model, ids, priority, min(ids),
                                              self.costs.image_ms(spec) / 1000.0 * len(ids)))
            if lots:
                out[tenant] = lots
        return out

    def _backlog(self, lots: dict[str, list[fairshare.Lot]]) -> dict[str, dict[str, float]]:
        """Each tenant's whole pending work per model, in GPU-seconds: its jobs on the model times
        the cost per job of its next micro-batches there (the head's specs are the ones read)."""
        out: dict[str, dict[str, float]] = {}
        for tenant, tenant_lots in lots.items():
            per_job: dict[str, float] = {}
            for lot in tenant_lots:
                per_job.setdefault(lot.model, lot.cost_s / len(lot.job_ids))
            fallback = next(iter(per_job.values()), 0.0)
            counts = self.per_model.get(tenant, {})
            out[tenant] = {m: n * per_job.get(m, fallback) for m, n in counts.items() if m and n}
        return out

    # -- who can take it ----------------------------------------------------------------------------
    def _workers(self, now: float) -> list[fairshare.WorkerView]:
        from datetime import timedelta

        if self.live is None or now - self.live_read >= WORKERS_EVERY_S:
            cutoff = self.ledger.clock() - timedelta(seconds=WORKER_FRESH_S)
            self.live = [w for w in self.ledger.workers() if w.state == "active" and w.last_heartbeat >= cutoff]
            self.live_read = now
        live = self.live
        unknown = [w.name for w in live if w.name not in self.current]
        if unknown:
            for name, (model, _) in self.ledger.worker_activity().items():
                if name in unknown and model:
                    self.current[name] = model
        return [fairshare.WorkerView(w.name, None if "*" in w.models else frozenset(w.models),
                                     self.current.get(w.name), 0, max(0.0, self.busy_until.get(w.name, now) - now))
                for w in live]

    def _sweep(self, live: list[fairshare.WorkerView]) -> None:
        """Drop the queues of workers that are gone, stopped, draining or cordoned: the jobs in them
        are marked published, so the reconciler finds them without a message and publishes them
        to their models' queues."""
        names = {w.name for w in live}
        gone = [worker_queue(self.config.queue, w.name) for w in self.ledger.workers() if w.name not in names]
        if gone:
            dropped = self.publisher.drop_queues(gone)
            if dropped:
                log.info("dropped %d messages queued for workers that are gone", dropped)
        for name in list(self.current):
            if name not in names:
                self.current.pop(name, None)
                self.busy_until.pop(name, None)

