"""Watching a batch: a live progress line with counts per state, images/s and ETA."""

from __future__ import annotations

import time
from typing import Callable, TextIO

from farm import states


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
          clock: Callable[[], float] = time.monotonic) -> dict[str, int]:
    """Poll until every job is in a terminal state (or ``timeout``); draw progress on ``stream``."""
    started = clock()
    tty = bool(stream and hasattr(stream, "isatty") and stream.isatty())
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
        time.sleep(interval)
