"""Job states and the one table of allowed transitions.

queued -> running -> succeeded | failed; queued | running -> cancelled; a retry moves a failed
or cancelled job back to queued (with a new attempt). The ledger turns each transition into a
conditional UPDATE (``WHERE state IN sources``) so a stale or duplicate actor changes nothing.
"""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# event -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "claim": (frozenset({QUEUED}), RUNNING),
    "succeed": (frozenset({RUNNING}), SUCCEEDED),
    "fail": (frozenset({RUNNING}), FAILED),
    "requeue": (frozenset({RUNNING}), QUEUED),  # an infrastructure error or a lapsed lease
    "cancel": (frozenset({QUEUED, RUNNING}), CANCELLED),
    "retry": (frozenset({FAILED, CANCELLED}), QUEUED),
}


def transition(event: str) -> tuple[frozenset[str], str]:
    """(allowed source states, target state) of an event."""
    return TRANSITIONS[event]


def can(event: str, state: str) -> bool:
    sources, _ = TRANSITIONS[event]
    return state in sources
