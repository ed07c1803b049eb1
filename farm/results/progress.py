"""Watching a batch: a live progress line with counts per state, images/s and ETA, and the notices
a waiting user needs (nothing is there to render the batch; the local workers were restarted)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable, Iterable, TextIO

from farm.jobs import states


def eta_seconds(succeeded: int, remaining: int, elapsed: float) -> float | None:
    """Seconds left at the rate so far (images done / time since the first started); 0 when
    nothing remains, None before a rate exists."""
    if remaining <= 0:
        return 0.0
    if succeeded <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / succeeded


def render_line(counts: dict[str, int], total: int, elapsed: float, width: int = 30) -> str:
    done = sum(counts.get(s, 0) for s in states.TERMINAL)
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    succeeded = counts.get(states.SUCCEEDED, 0)
    rate = succeeded / elapsed if elapsed > 0 else 0.0
    remaining = total - done
    eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining else ("0s" if not remaining else "?")
    parts = [f"[{bar}] {done}/{total}"]
    parts += [f"{s} {counts.get(s, 0)}" for s in (states.QUEUED, states.RUNNING, states.SUCCEEDED,
                                                   states.FAILED, states.CANCELLED) if counts.get(s)]
    parts.append(f"{rate:.2f} img/s  ETA {eta}")
    return "  ".join(parts)


def watch(counts_fn: Callable[[], dict[str, int]], total: int, *, stream: TextIO | None,
          interval: float = 0.25, timeout: float | None = None,
          clock: Callable[[], float] = time.monotonic,
          check: Callable[[], Iterable[str]] | None = None, notices: TextIO | None = None,
          sleep: Callable[[float], object] = time.sleep) -> dict[str, int]:
    """Poll until every job is in a terminal state (or ``timeout``); draw progress on ``stream``.

    ``check`` runs once per poll and returns lines to report (it may also repair what it finds);
    they go to ``notices`` (default: ``stream``), each on a line of its own, even between redraws
    of a terminal's progress line. ``sleep(interval)`` waits between polls; a doorbell's wait
    (farm.fleet.doorbell) returns early when the batch moved.
    """
    started = clock()
    tty = bool(stream and hasattr(stream, "isatty") and stream.isatty())
    notices = notices or stream
    last_line, last_print = "", 0.0
    while True:
        counts = counts_fn()
        done = sum(counts.get(s, 0) for s in states.TERMINAL)
        now = clock()
        if stream is not None:
            line = render_line(counts, total, now - started)
            if tty:
                stream.write("\r" + line.ljust(len(last_line)))
                stream.flush()
            elif line != last_line and (now - last_print >= 2.0 or done >= total):
                stream.write(line + "\n")
                stream.flush()
                last_print = now
            last_line = line
        if done >= total or (timeout is not None and now - started >= timeout):
            if stream is not None and tty:
                stream.write("\n")
            return counts
        for message in (check() if check else ()):
            if notices is None:
                continue
            if tty and notices is stream:
                notices.write("\n")  # leave the progress line; it is drawn afresh on the next poll
                last_line = ""
            notices.write(message + "\n")
            notices.flush()
        sleep(interval)


# -- is anything there to render it? ----------------------------------------------------------
def live_workers(workers, now: datetime, models: set[str] | None = None) -> list:
    """The workers taking new work: active, with recent heartbeats (cordoned, draining, stopped
    and lost ones take none), and serving one of ``models`` when given."""
    return [w for w in workers
            if states.worker_shown_state(w.state, (now - w.last_heartbeat).total_seconds()) == states.WORKER_ACTIVE
            and (not models or any(w.serves(m) for m in models))]


def describe_fleet(workers, now: datetime) -> str:
    """Why no worker is live, in a few words: "none has registered", "farm-cpu0@h lost (beat 45s ago)"."""
    if not workers:
        return "no worker has registered with this ledger"
    parts = []
    for w in sorted(workers, key=lambda w: w.last_heartbeat, reverse=True)[:3]:
        age = (now - w.last_heartbeat).total_seconds()
        parts.append(f"{w.name} {states.worker_shown_state(w.state, age)} (last heartbeat {age:.0f}s ago)")
    more = f" and {len(workers) - 3} more" if len(workers) > 3 else ""
    return ", ".join(parts) + more


class NoWorkerNotice:
    """Says once, after ``grace_s`` without a live worker, that nothing is there to render a
    batch, instead of a progress line that never moves. A worker coming back re-arms it.

    "Live" means alive, taking work and serving one of the batch's models still to render.
    """

    def __init__(self, batch: str, grace_s: float, clock: Callable[[], float] = time.monotonic):
        self.batch, self.grace_s, self.clock = batch, grace_s, clock
        self.since: float | None = None  # when the fleet was first seen without a live worker
        self.said = False

    def reset(self) -> None:
        """Start the grace period again (a worker was just started)."""
        self.since, self.said = None, False

    def __call__(self, workers, now: datetime, models: set[str] | None = None) -> str | None:
        if not models and models is not None:
            return None  # nothing left to render
        if live_workers(workers, now, models):
            self.reset()
            return None
        tick = self.clock()
        self.since = tick if self.since is None else self.since
        if self.said or tick - self.since < self.grace_s:
            return None
        self.said = True
        if models and live_workers(workers, now):  # alive, but none serves what is left to render
            wanted = ",".join(sorted(models))
            return (f"farm: no live worker serves {wanted} for batch {self.batch} ({tick - self.since:.0f}s); "
                    f"start one with `farm worker --models {wanted}`")
        return (f"farm: no live worker to render batch {self.batch} for {tick - self.since:.0f}s "
                f"({describe_fleet(workers, now)}); start one with `farm up` or `farm worker`")


class TrainingProgress:
    """The lines that report a training job's progress (issue 14), each once when it moves:
    ``job 12: step 300/1000  loss 0.0123  4.10 steps/s  ETA 171s  (checkpoint at 300)``."""

    def __init__(self):
        self.shown: dict[int, tuple] = {}

    def lines(self, trainings: dict) -> list[str]:
        out = []
        for job_id, t in sorted(trainings.items()):
            if self.shown.get(job_id) == (t.step, t.result):
                continue
            self.shown[job_id] = (t.step, t.result)
            if t.result:
                out.append(f"job {job_id}: trained {t.total_steps} steps; registered {t.result}")
                continue
            loss = f"  loss {t.loss:.4g}" if t.loss is not None else ""
            speed = f"  {t.steps_per_s:.2f} steps/s" if t.steps_per_s else ""
            eta = f"  ETA {t.eta_s:.0f}s" if t.eta_s is not None else ""
            saved = f"  (checkpoint at {t.checkpoint_step})" if t.checkpoint_step else ""
            out.append(f"job {job_id}: step {t.step}/{t.total_steps}{loss}{speed}{eta}{saved}")
        return out
