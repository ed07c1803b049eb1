"""How many workers a model's backlog asks for (issue 26): pure, no I/O.

The backlog is in estimated GPU-seconds (``jobs.cost_ms`` of the jobs queued or rendering, see
``farm.fleet.costs``): a worker renders one GPU-second per second per unit of concurrency, so
draining ``backlog_s`` within ``drain_s`` takes ``ceil(backlog_s / (drain_s * per_worker))``
workers. Scaling up to that happens at once; scaling down waits until the count is more than the
backlog needs even with a drain target ``hold`` shorter, so a backlog that wobbles around a
boundary keeps its workers instead of flapping (a stopped worker is a cold start later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOLD = 0.2  # scale down only when the workers left would still drain within 80% of the target


@dataclass(frozen=True)
class Backlog:
    """One model's work waiting or rendering: how many jobs, and their estimated GPU-seconds."""

    model: str
    jobs: int
    gpu_s: float


def needed(backlog_s: float, drain_s: float, per_worker: float = 1.0) -> int:
    """The fewest workers that drain ``backlog_s`` GPU-seconds within ``drain_s`` seconds."""
    if backlog_s <= 0:
        return 0
    # the tiny slack keeps float rounding (300.0000001 / 300) from asking for one worker too many
    return max(1, math.ceil(backlog_s / (drain_s * per_worker) - 1e-9))


def desired_workers(backlog_s: float, *, drain_s: float, per_worker: float = 1.0, minimum: int = 0,
                    maximum: int | None = None, current: int = 0, hold: float = HOLD,
                    jobs: int | None = None) -> int:
    """The worker count for a backlog of ``backlog_s`` GPU-seconds to drain within ``drain_s``.

    ``current`` is kept while it lies between what the target needs and what a target ``hold``
    shorter needs; below that it rises to the need, above it falls to the stricter need. At zero
    backlog the answer is ``minimum`` (a KEDA-style scale to zero when that is 0). ``jobs``, when
    given, caps the count: a job is never split across workers, so more workers than jobs idle.
    ``maximum`` caps it too (and wins over ``minimum``: a budget is a hard limit)."""
    if drain_s <= 0 or per_worker <= 0:
        raise ValueError("drain_s and per_worker must be positive")
    if not 0 <= hold < 1:
        raise ValueError("hold must be in [0, 1)")
    if minimum < 0 or (maximum is not None and maximum < 0) or current < 0:
        raise ValueError("counts cannot be negative")
    if backlog_s <= 0:
        count = 0
    else:
        need = needed(backlog_s, drain_s, per_worker)
        strict = needed(backlog_s, drain_s * (1 - hold), per_worker)
        count = min(max(current, need), strict)
        if jobs is not None:
            count = min(count, math.ceil(jobs / per_worker))
    count = max(count, minimum)
    return count if maximum is None else min(count, maximum)


def drain_time_s(backlog_s: float, workers: int, per_worker: float = 1.0) -> float | None:
    """How long ``workers`` take to render ``backlog_s`` GPU-seconds (None: never, with none)."""
    if backlog_s <= 0:
        return 0.0
    return backlog_s / (workers * per_worker) if workers > 0 else None


def backlogs(rows, models: list[str] | None = None) -> dict[str, Backlog]:
    """Per model, from the ledger's ``backlog_rows`` (model, width, height, steps, jobs, known ms,
    jobs without a cost): a job with no recorded cost yet (submitted before costs were recorded)
    counts at the default estimate for its size and steps. ``models`` are reported even at zero."""
    from farm.fleet.costs import default_image_ms

    jobs: dict[str, int] = {m: 0 for m in models or []}
    ms: dict[str, float] = {m: 0.0 for m in models or []}
    for model, width, height, steps, count, known_ms, unknown in rows:
        jobs[model] = jobs.get(model, 0) + count
        ms[model] = ms.get(model, 0.0) + known_ms + unknown * default_image_ms(width, height, steps)
    return {m: Backlog(m, jobs[m], ms[m] / 1000.0) for m in sorted(jobs)}


def live_serving(workers, model: str, now) -> int:
    """How many of ``workers`` (``WorkerInfo``s) consume ``model``'s queue and are alive and
    active (a draining or cordoned worker is on its way out; a silent one is lost)."""
    from farm.jobs import states

    return sum(1 for w in workers if w.serves(model) and states.worker_shown_state(
        w.state, (now - w.last_heartbeat).total_seconds()) == states.WORKER_ACTIVE)


@dataclass(frozen=True)
class Signal:
    """What the metrics endpoint reports for one model."""

    model: str
    jobs: int
    gpu_s: float
    current: int
    desired: int


def signals(rows, workers, now, *, drain_s: float, models: list[str] | None = None) -> list[Signal]:
    """Per model with a backlog (and each of ``models``): its backlog, its live workers and the
    count it asks for to drain within ``drain_s``, from the ledger's rows and workers as read."""
    found = backlogs(rows, models)
    return [Signal(m, b.jobs, b.gpu_s, current, desired_workers(b.gpu_s, drain_s=drain_s, current=current, jobs=b.jobs))
            for m, b in found.items() for current in [live_serving(workers, m, now)]]
