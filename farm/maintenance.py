"""Periodic fleet maintenance, run by whichever worker holds the ledger's lease.

Aging: strict priorities would starve low-priority work forever under a steady stream of urgent
batches. A queued job whose message has waited longer than the aging period moves up one
priority level and is published again at that level; the older message becomes a duplicate that
the claim (a compare-and-set on the job's state) turns into a no-op.
"""

from __future__ import annotations

from datetime import timedelta

from farm.producer import republish

LOCK = "maintenance"


def age_waiting_jobs(ledger, publisher, *, aging_s: float, micro_batch: int) -> int:
    """Promote and republish jobs waiting longer than ``aging_s``; returns how many."""
    waiting = ledger.waiting_too_long(ledger.clock() - timedelta(seconds=aging_s))
    if not waiting:
        return 0
    ledger.promote(waiting)
    republish(ledger, publisher, waiting, micro_batch=micro_batch)
    return len(waiting)


def tick(ledger, publisher, *, holder: str, period_s: float, aging_s: float, micro_batch: int) -> dict | None:
    """One round of maintenance if this process holds the lease (None otherwise)."""
    if not ledger.acquire_lock(LOCK, holder, ttl_s=period_s * 2):
        return None
    return {"aged": age_waiting_jobs(ledger, publisher, aging_s=aging_s, micro_batch=micro_batch)}
