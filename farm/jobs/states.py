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


# -- priorities ---------------------------------------------------------------------------------
MAX_PRIORITY = 9  # priorities run 0..9, higher first (the broker maps them onto its own levels)

# -- batches ------------------------------------------------------------------------------------
BATCH_ACTIVE = "active"
BATCH_PAUSED = "paused"  # workers skip its jobs; they stay queued
BATCH_STATES = (BATCH_ACTIVE, BATCH_PAUSED)

# -- attempts: how one try at a job ended ------------------------------------------------------
ATTEMPT_RUNNING = "running"
ATTEMPT_SUCCEEDED = "succeeded"
ATTEMPT_FAILED = "failed"  # bad input, or attempts used up
ATTEMPT_RETRY = "retry"  # an infrastructure error: requeued with a backoff
ATTEMPT_TIMEOUT = "timeout"  # ran past its time limit
ATTEMPT_LOST = "lost"  # its worker stopped renewing the lease
ATTEMPT_DRAINED = "drained"  # its worker stopped or drained: requeued, not the job's fault
ATTEMPT_REQUEUED = "requeued"
ATTEMPT_CANCELLED = "cancelled"
ATTEMPT_SUPERSEDED = "superseded"  # a newer attempt owns the job; this one changed nothing
ATTEMPT_OUTCOMES = (ATTEMPT_RUNNING, ATTEMPT_SUCCEEDED, ATTEMPT_FAILED, ATTEMPT_RETRY, ATTEMPT_TIMEOUT,
                    ATTEMPT_LOST, ATTEMPT_DRAINED, ATTEMPT_REQUEUED, ATTEMPT_CANCELLED, ATTEMPT_SUPERSEDED)
# the outcomes that use up one of a job's attempts (a drain or a cancel is not the job's fault)
FAILED_OUTCOMES = frozenset({ATTEMPT_FAILED, ATTEMPT_RETRY, ATTEMPT_LOST, ATTEMPT_TIMEOUT})

# -- workers ------------------------------------------------------------------------------------
WORKER_ACTIVE = "active"
WORKER_DRAINING = "draining"  # finishes nothing new, hands back what it holds, exits
WORKER_CORDONED = "cordoned"  # up, but consumes nothing
WORKER_STOPPED = "stopped"
WORKER_LOST = "lost"  # shown, never stored: a live state whose heartbeats stopped
WORKER_STATES = (WORKER_ACTIVE, WORKER_DRAINING, WORKER_CORDONED, WORKER_STOPPED)
HEARTBEAT_S = 10.0
LOST_AFTER_S = 3 * HEARTBEAT_S  # three missed heartbeats: crashed or partitioned


def worker_shown_state(state: str, heartbeat_age_s: float) -> str:
    """What a worker is, as far as anyone can tell: a worker in a live state whose heartbeats
    stopped is lost."""
    live = state in (WORKER_ACTIVE, WORKER_DRAINING, WORKER_CORDONED)
    return WORKER_LOST if live and heartbeat_age_s > LOST_AFTER_S else state
