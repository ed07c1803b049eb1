"""The fair order (farm.fleet.fairshare), a pure function, driven by a small discrete-event fleet:
workers render what they are given in order, one micro-batch at a time; the dispatcher is asked
again whenever one finishes, as the real one is. Properties: weights respected over any long
enough run, no tenant starves (an idle tenant is served at once and earns no credit for its idle
time), priority then age within a tenant, workers keep their models."""

from __future__ import annotations

import itertools
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.fleet.fairshare import Lot, TenantView, WorkerView, allocate, assign, fair_shares


class Fleet:
    """Tenants with endless (or given) work; workers that take what the dispatcher gives them."""

    def __init__(self, workers: int, *, ahead: int = 1):
        self.ahead = ahead
        self.now = 0.0
        self.queues: dict[str, deque] = {f"w{i}": deque() for i in range(workers)}
        self.ends: dict[str, float] = {}  # worker -> when its head lot finishes
        self.current: dict[str, str | None] = {w: None for w in self.queues}
        self.weights: dict[str, float] = {}
        self.vfinish: dict[str, float] = {}
        self.backlog: dict[str, list[Lot]] = {}
        self.served: list[tuple[float, Lot, str]] = []  # (finish time, lot, worker)
        self.switches = 0
        self.ids = itertools.count(1)
        self.backlogged: set[str] = set()
        self.allocation: dict[str, int] | None = None

    def add(self, tenant: str, weight: float, model: str, lots: int, cost: float = 1.0, priority: int = 0):
        self.weights[tenant] = weight
        self.vfinish.setdefault(tenant, 0.0)
        for _ in range(lots):
            first = next(self.ids)
            self.backlog.setdefault(tenant, []).append(Lot(tenant, model, (first,), priority, first, cost))

    def dispatch(self) -> list:
        flying = {lot.tenant for q in self.queues.values() for lot in q}
        active = flying | self.backlogged
        self.backlogged = {t for t, lots in self.backlog.items() if lots}
        tenants = {t: TenantView(t, self.weights[t], self.vfinish[t], t in active) for t in self.weights}
        # a worker's model, as the dispatcher knows it: that of the last micro-batch it was given
        views = [WorkerView(w, None, q[-1].model if q else self.current[w], max(0, len(q) - 1),
                            max(0.0, self.ends.get(w, 0.0) - self.now)) for w, q in self.queues.items()]
        held = {lot.model for _, lot, _ in self.served[-len(self.queues):]}
        plan = assign(self.backlog, tenants, views, ahead=self.ahead, held=held, previous=self.allocation)
        self.allocation = plan.allocation or self.allocation
        self.vfinish.update(plan.vfinish)
        for a in plan.assignments:
            self.backlog[a.lot.tenant].remove(a.lot)
            queue = self.queues[a.worker]
            if a.urgent and queue:
                queue.insert(1, a.lot)  # the head of its waiting messages, behind what it renders
            else:
                queue.append(a.lot)
            if len(queue) == 1:
                self.ends[a.worker] = self.now + a.lot.cost_s
        return plan.assignments

    def step(self) -> bool:
        busy = [w for w, q in self.queues.items() if q]
        if not busy:
            return False
        worker = min(busy, key=lambda w: (self.ends[w], w))
        self.now = self.ends[worker]
        lot = self.queues[worker].popleft()
        if self.current[worker] not in (None, lot.model):
            self.switches += 1
        self.current[worker] = lot.model
        self.served.append((self.now, lot, worker))
        if self.queues[worker]:
            self.ends[worker] = self.now + self.queues[worker][0].cost_s
        return True

    def run(self, completions: int) -> None:
        self.dispatch()
        for _ in range(completions):
            if not self.step():
                break
            self.dispatch()

    def usage(self, since: float = 0.0) -> dict[str, float]:
        out: dict[str, float] = {t: 0.0 for t in self.weights}
        for at, lot, _ in self.served:
            if at > since:
                out[lot.tenant] += lot.cost_s
        return out


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=4),
       costs=st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0]), min_size=4, max_size=4),
       workers=st.integers(1, 8), ahead=st.integers(1, 2))
def test_backlogged_tenants_get_gpu_time_in_proportion_to_their_weights(weights, costs, workers, ahead):
    fleet = Fleet(workers, ahead=ahead)
    for i, weight in enumerate(weights):
        fleet.add(f"t{i}", weight, "m", lots=700, cost=costs[i])
    fleet.run(500)
    used = fleet.usage()
    total = sum(used.values())
    # the lag of start-time fair queueing: what sits in the workers' queues plus one lot each
    slack = (workers * (ahead + 1) + len(weights)) * max(costs)
    for i, weight in enumerate(weights):
        share = total * weight / sum(weights)
        assert abs(used[f"t{i}"] - share) <= slack, (used, share, slack)


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.floats(0.05, 20), min_size=2, max_size=5), workers=st.integers(1, 8))
def test_no_backlogged_tenant_starves(weights, workers):
    fleet = Fleet(workers)
    for i, weight in enumerate(weights):
        fleet.add(f"t{i}", weight, "m", lots=600)
    needed = int(sum(weights) / min(weights)) + 2 * workers + len(weights)  # lots before the lightest's turn
    fleet.run(needed + workers)
    served = {lot.tenant for _, lot, _ in fleet.served}
    assert served == set(fleet.weights)


def test_an_idle_tenant_is_served_at_once_and_earns_no_credit_for_its_idle_time():
    fleet = Fleet(4)
    fleet.add("a", 1, "m", lots=3000)
    fleet.add("b", 1, "m", lots=3000)
    fleet.run(400)  # a and b have run a long time; c has not
    arrival = fleet.now
    fleet.add("c", 1, "m", lots=3000)
    first = fleet.dispatch()
    assert any(a.lot.tenant == "c" and a.urgent for a in first), "an idle tenant's first micro-batch goes first"
    fleet.run(600)
    used = fleet.usage(since=arrival + 20)  # past the first few lots
    total = sum(used.values())
    # level with the others from its arrival: no burst to make up for the time it was idle
    assert abs(used["c"] - total / 3) <= 4 * 2 + 3, used


@settings(max_examples=40, deadline=None)
@given(priorities=st.lists(st.integers(0, 9), min_size=5, max_size=60), workers=st.integers(1, 4))
def test_within_a_tenant_priority_then_age(priorities, workers):
    fleet = Fleet(workers)
    fleet.weights["t"] = 1.0
    fleet.vfinish["t"] = 0.0
    for priority in priorities:
        first = next(fleet.ids)
        fleet.backlog.setdefault("t", []).append(Lot("t", "m", (first,), priority, first, 1.0))
    fleet.add("other", 1, "m", lots=200)
    dispatched: list[Lot] = []
    original = fleet.dispatch

    def recording():
        assignments = original()
        dispatched.extend(a.lot for a in assignments if a.lot.tenant == "t")
        return assignments

    fleet.dispatch = recording  # type: ignore[method-assign]
    fleet.run(len(priorities) * 3)
    assert len(dispatched) == len(priorities)
    assert [lot.order for lot in dispatched] == sorted(lot.order for lot in dispatched)


def test_workers_keep_their_models_and_tenants_on_two_models_share_by_weight():
    """A on model x (weight 1), B on model y (weight 2), 8 workers: whole workers per model
    (3 and 5: Jain's index 0.99 against the exact 2.67 : 5.33), and no worker swaps models once
    the split is made."""
    fleet = Fleet(8)
    fleet.add("a", 1, "x", lots=3000)
    fleet.run(50)  # a alone: every worker on x
    arrival = fleet.now
    fleet.add("b", 2, "y", lots=3000)
    fleet.run(100)
    switches_after_split = fleet.switches
    fleet.run(1500)
    # five workers moved to y, once; the one that took b's first (urgent) micro-batch went back
    # to x for the micro-batch it already held (7); after the split nobody moves again
    assert fleet.switches == switches_after_split <= 7
    used = fleet.usage(since=arrival + 20)
    normalised = [used["a"] / 1, used["b"] / 2]
    jain = sum(normalised) ** 2 / (2 * sum(x * x for x in normalised))
    assert jain >= 0.98, (used, jain)


def test_a_small_batch_on_another_model_waits_for_one_micro_batch_at_most():
    fleet = Fleet(8)
    fleet.add("a", 1, "x", lots=5000, cost=1.0)
    fleet.run(200)
    arrival = fleet.now
    fleet.add("c", 1, "y", lots=1, cost=1.0)
    fleet.dispatch()
    fleet.run(20)
    (done,) = [at for at, lot, _ in fleet.served if lot.tenant == "c"]
    assert done - arrival <= 2.0 + 1e-9  # the rest of one micro-batch, then its own


def test_allocation_gives_whole_workers_and_one_to_every_model_with_work():
    lots = {"a": [Lot("a", "x", (1,), 0, 1, 1000.0)], "b": [Lot("b", "y", (2,), 0, 2, 1000.0)],
            "c": [Lot("c", "z", (3,), 0, 3, 0.1)]}
    counts = allocate(lots, {"a": 1, "b": 2, "c": 1}, 8)
    assert sum(counts.values()) == 8 and counts["z"] == 1 and counts["y"] > counts["x"] >= 2
    assert allocate(lots, {"a": 1, "b": 1, "c": 1}, 0) == {}


def test_fair_shares_cap_light_tenants_at_their_demand():
    shares = fair_shares({"a": 100.0, "b": 100.0, "c": 0.5}, {"a": 1, "b": 2, "c": 1}, 8)
    assert shares["c"] == 0.5
    assert abs(shares["b"] - 2 * shares["a"]) < 1e-9 and abs(sum(shares.values()) - 8) < 1e-9
