"""The fair order (issue 24): which micro-batch each worker renders next, when tenants share a fleet.

Pure: the dispatcher (farm.fleet.dispatcher) reads the ledger and the broker into these values,
calls ``assign`` and writes what it returns. Three rules, in this order of concern:

1. **Fair between tenants, by GPU time, weighted.** Start-time fair queueing over tenants: each
   tenant has a virtual finish time ``F`` (GPU-seconds it was charged, divided by its weight); the
   next micro-batch goes to the tenant whose start tag ``S = max(F, V)`` is smallest, and charges
   it ``cost / weight``. ``V``, the system's virtual time, is the smallest ``F`` of the tenants
   that were already backlogged, so a tenant that was idle starts level with the others instead
   of cashing in the time it did not use. Backlogged tenants get GPU time in proportion to their
   weights.
2. **Workers keep their models.** Fair shares become a whole number of workers per model
   (``allocate``); a worker stays on the model it holds while that model has work and is not
   over its allocation, and only then moves to the model furthest below its allocation. A model
   that had work a moment ago keeps one worker (``held``), so light tenants' batches do not make
   workers swap models back and forth. Micro-batches stay whole and homogeneous: a ``Lot`` is one.
3. **Within a tenant, priority then age**, as before (aging raises priority, so nothing starves).

A tenant that was idle (nothing waiting, nothing in flight) gets its next micro-batch published
``urgent``: at the head of the chosen worker's queue, so a small batch waits for one micro-batch at most, not behind
the look-ahead of the backlogged tenants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lot:
    """One micro-batch ready to publish: jobs of one tenant with identical settings."""

    tenant: str
    model: str
    job_ids: tuple[int, ...]
    priority: int
    first_id: int  # the oldest job's id: age order within a priority
    cost_s: float  # estimated GPU seconds

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.first_id)


@dataclass
class WorkerView:
    name: str
    serves: frozenset[str] | None  # None: every model
    current: str | None  # the model it holds (the last one it was given)
    waiting: int  # micro-batches published to it and not yet taken
    busy_until: float = 0.0  # when its current micro-batch should end (seconds, same clock as now)

    def can_serve(self, model: str) -> bool:
        return self.serves is None or model in self.serves


@dataclass(frozen=True)
class TenantView:
    name: str
    weight: float
    vfinish: float  # F: GPU-seconds charged / weight
    # had work waiting or in flight when the dispatcher last looked: a tenant that had none is
    # arriving, starts level with the others (no credit for idle time) and goes first
    active: bool


@dataclass(frozen=True)
class Assignment:
    worker: str
    lot: Lot
    urgent: bool
    start_tag: float


@dataclass
class Plan:
    assignments: list[Assignment] = field(default_factory=list)
    vfinish: dict[str, float] = field(default_factory=dict)  # tenants whose F changed
    allocation: dict[str, int] = field(default_factory=dict)


def virtual_time(tenants: dict[str, TenantView], backlogged: set[str]) -> float:
    """V: the smallest F among active tenants; with none active, the largest F among those with
    work waiting (everyone starts level, nobody cashes in old idle time)."""
    flying = [t.vfinish for t in tenants.values() if t.active]
    if flying:
        return min(flying)
    waiting = [tenants[name].vfinish for name in backlogged if name in tenants]
    return max(waiting) if waiting else 0.0


def fair_shares(demand: dict[str, float], weights: dict[str, float], capacity: float) -> dict[str, float]:
    """Weighted max-min fair division of ``capacity`` (workers): a tenant never gets more than it
    asks for (``demand``, in workers); what it leaves is shared among the others by weight."""
    shares: dict[str, float] = {}
    open_ = {t for t, d in demand.items() if d > 0}
    left = float(capacity)
    while open_ and left > 1e-12:
        total = sum(max(weights.get(t, 1.0), 1e-9) for t in open_)
        offer = {t: left * max(weights.get(t, 1.0), 1e-9) / total for t in open_}
        capped = {t for t in open_ if demand[t] - shares.get(t, 0.0) <= offer[t]}
        if not capped:
            for t in open_:
                shares[t] = shares.get(t, 0.0) + offer[t]
            break
        for t in capped:
            give = demand[t] - shares.get(t, 0.0)
            shares[t] = demand[t]
            left -= give
        open_ -= capped
    return shares


def allocate(lots: dict[str, list[Lot]], weights: dict[str, float], workers: int, *,
             held: set[str] = frozenset(), horizon_s: float = 30.0,
             backlog: dict[str, dict[str, float]] | None = None,
             previous: dict[str, int] | None = None) -> dict[str, int]:
    """Whole workers per model: each tenant's fair share of the fleet, spread over its models in
    proportion to its pending work on each, rounded by largest remainder. Every model with work
    (or ``held``: work a moment ago) keeps at least one worker while there are enough workers.
    A tenant's demand is the workers it would need to clear what it has pending within
    ``horizon_s`` (a small batch asks for little; a backlog asks for the whole fleet).
    ``backlog``: each tenant's whole pending work per model, in GPU-seconds, where ``lots`` holds
    only the head of it (the dispatcher reads only the next few micro-batches' specs).
    ``previous``: the allocation last used. It is kept while every model's exact share stays
    within one worker of it, so shares that hover around a rounding boundary (a backlog running
    out, a light tenant's batch coming and going) do not move workers back and forth."""
    per_model: dict[str, dict[str, float]] = {}
    for tenant, tenant_lots in lots.items():
        for lot in tenant_lots:
            per_model.setdefault(tenant, {})
            per_model[tenant][lot.model] = per_model[tenant].get(lot.model, 0.0) + lot.cost_s
    for tenant, models in (backlog or {}).items():
        if tenant in per_model:
            for model, seconds in models.items():
                per_model[tenant][model] = max(per_model[tenant].get(model, 0.0), seconds)
    demand = {t: sum(m.values()) / horizon_s for t, m in per_model.items()}
    shares = fair_shares(demand, weights, workers)
    wanted: dict[str, float] = {m: 0.0 for m in held}
    for tenant, models in per_model.items():
        total = sum(models.values()) or 1.0
        for model, cost in models.items():
            wanted[model] = wanted.get(model, 0.0) + shares.get(tenant, 0.0) * cost / total
    if not wanted or workers <= 0:
        return {}
    total_wanted = sum(wanted.values())
    scale = workers / total_wanted if total_wanted > 0 else 0.0
    exact = {m: w * scale for m, w in wanted.items()}
    if total_wanted <= 0:
        exact = {m: workers / len(wanted) for m in wanted}
    counts = {m: math.floor(x) for m, x in exact.items()}
    for m in sorted(exact, key=lambda m: (-(exact[m] - counts[m]), m))[: workers - sum(counts.values())]:
        counts[m] += 1
    # at least one worker for every model with work, taken from the best-provided model
    for model in sorted(exact, key=lambda m: (-exact[m], m)):
        if counts[model] == 0:
            donor = max(counts, key=lambda m: (counts[m], m))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[model] = 1
    if previous and set(previous) == set(counts) and sum(previous.values()) == workers \
            and all(previous[m] >= min(1, counts[m]) and abs(exact[m] - previous[m]) < 1.0 for m in counts):
        return dict(previous)
    return counts


def assign(lots: dict[str, list[Lot]], tenants: dict[str, TenantView], workers: list[WorkerView], *,
           ahead: int = 1, held: set[str] = frozenset(), horizon_s: float = 30.0,
           backlog: dict[str, dict[str, float]] | None = None, previous: dict[str, int] | None = None) -> Plan:
    """Give free workers their next micro-batches in fair order.

    ``lots``: each tenant's micro-batches not yet published, in priority-then-age order.
    ``workers``: the live workers; one with fewer than ``ahead`` micro-batches waiting has a free
    slot. Returns the assignments (in the order to publish them), the tenants' new finish tags
    and the allocation used. Nothing here reads a clock or the ledger.
    """
    pending = {t: sorted(ls, key=lambda lot: lot.order) for t, ls in lots.items() if ls}
    plan = Plan()
    if not pending or not workers:
        return plan
    weights = {t: max(tenants[t].weight if t in tenants else 1.0, 1e-9) for t in pending}
    finish = {t: tenants[t].vfinish if t in tenants else 0.0 for t in pending}
    vnow = virtual_time(tenants, set(pending))
    allocation = allocate(pending, weights, len(workers), held=set(held), horizon_s=horizon_s, backlog=backlog,
                          previous=previous)
    plan.allocation = allocation
    on_model: dict[str, int] = {}
    for w in workers:
        if w.current is not None:
            on_model[w.current] = on_model.get(w.current, 0) + 1

    def start_tag(tenant: str) -> float:
        return max(finish[tenant], vnow)

    def take(tenant: str, model: str | None, worker: WorkerView, urgent: bool) -> None:
        tenant_lots = pending[tenant]
        index = next(i for i, lot in enumerate(tenant_lots) if model is None or lot.model == model)
        lot = tenant_lots.pop(index)
        tag = start_tag(tenant)
        finish[tenant] = tag + lot.cost_s / weights[tenant]
        plan.vfinish[tenant] = finish[tenant]
        if worker.current != lot.model:
            if worker.current is not None:
                on_model[worker.current] -= 1
            on_model[lot.model] = on_model.get(lot.model, 0) + 1
            worker.current = lot.model
        worker.waiting += 1
        worker.busy_until += lot.cost_s
        plan.assignments.append(Assignment(worker.name, lot, urgent, tag))

    def tenants_with(model: str) -> list[str]:
        return [t for t, ls in pending.items() if any(lot.model == model for lot in ls)]

    # 1. tenants that were idle: their next micro-batch goes to the head of the queue of the
    # worker that frees up first, on its model if a worker holds it
    for tenant in sorted(pending, key=lambda t: (start_tag(t), t)):
        view = tenants.get(tenant)
        if (view is not None and view.active) or not pending[tenant]:
            continue
        model = pending[tenant][0].model
        able = [w for w in workers if w.can_serve(model)]
        if not able:
            continue
        holding = [w for w in able if w.current == model]
        spare = [w for w in able if w.current is None or on_model.get(w.current, 0) > allocation.get(w.current, 0)]
        worker = min(holding or spare or able, key=lambda w: (w.busy_until, w.name))
        take(tenant, model, worker, urgent=True)

    # 2. free slots, the worker that frees up first first
    while True:
        free = [w for w in workers if w.waiting < ahead]
        if not free or not any(pending.values()):
            break
        worker = min(free, key=lambda w: (w.busy_until, w.name))
        model = worker.current
        servable = {lot.model for ls in pending.values() for lot in ls if worker.can_serve(lot.model)}
        if not servable:
            worker.waiting = ahead  # nothing it can render: leave it
            continue
        if model not in servable or on_model.get(model, 0) > allocation.get(model, 0):
            # move to the model furthest below its allocation; stay if none is below and ours
            # has work, or hold (idle) if ours had work a moment ago
            below = sorted((m for m in servable if on_model.get(m, 0) < allocation.get(m, 0)),
                           key=lambda m: (on_model.get(m, 0) - allocation.get(m, 0), m))
            if below:
                model = below[0]
            elif model not in servable:
                if model in held:
                    worker.waiting = ahead
                    continue
                model = min(servable, key=lambda m: (on_model.get(m, 0) - allocation.get(m, 0), m))
        assert model is not None
        tenant = min(tenants_with(model), key=lambda t: (start_tag(t), t))
        take(tenant, model, worker, urgent=False)
    return plan
