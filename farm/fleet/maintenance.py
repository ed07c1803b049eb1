"""Periodic fleet maintenance, run by whichever worker holds the ledger's lease (and on demand by
`farm reap` / `farm reconcile`).

- Reaper: a running job whose attempt's lease lapsed (its worker died or hangs) goes back to the
  queue, or fails for good once it has used up its attempts, so a job that kills its worker every
  time stops instead of looping.
- Reconciler: a queued job that no message in the broker carries (a publish that failed, a Redis
  restart without persistence, a flushed queue, a message lost on a broken connection) is
  published again; so is a retry whose backoff has passed.
- Aging: strict priorities would starve low-priority work under a steady stream of urgent batches.
  A queued job whose message waited longer than the aging period moves up one priority level and
  is published again at that level; the old message becomes a duplicate the claim turns into a no-op.
"""

from __future__ import annotations

from datetime import timedelta

from farm.fleet import retry
from farm.fleet.producer import republish

LOCK = "maintenance"


def reap(ledger, publisher, *, max_attempts: int, micro_batch: int) -> dict:
    requeued, failed = [], 0
    for job_id, token in ledger.expired_leases():
        decision = retry.lease_lapsed(failures_before=ledger.failures(job_id), max_attempts=max_attempts)
        if decision.action == retry.FAIL:
            if ledger.fail_attempt(job_id, token, error=decision.error, outcome=decision.outcome):
                failed += 1
        elif ledger.requeue(job_id, token, error=decision.error, outcome=decision.outcome):
            requeued.append(job_id)
    if requeued and publisher is not None:
        republish(ledger, publisher, requeued, micro_batch=micro_batch)
    return {"requeued": len(requeued), "failed": failed}


def reconcile(ledger, publisher, *, grace_s: float, micro_batch: int, fair: bool = False) -> dict:
    """Publish queued jobs that no broker message carries. Jobs published less than ``grace_s``
    ago are left alone: their message may be in flight. With fair share (``fair``), jobs never
    published are the dispatcher's to publish, in fair order; only lost messages are replaced."""
    candidates = ledger.publish_candidates(ledger.clock() - timedelta(seconds=grace_s))
    if fair:
        candidates = [(job_id, published) for job_id, published in candidates if published]
    if not candidates:
        return {"republished": 0}
    present = (publisher.job_ids_in_broker(stale_after_s=max(grace_s, 5.0))
               if any(published for _, published in candidates) else set())
    missing = [job_id for job_id, _ in candidates if job_id not in present]
    if missing:
        republish(ledger, publisher, missing, micro_batch=micro_batch)
    return {"republished": len(missing)}


def age_waiting_jobs(ledger, publisher, *, aging_s: float, micro_batch: int, fair: bool = False) -> int:
    """Promote and republish jobs waiting longer than ``aging_s``; returns how many. With fair
    share, jobs the dispatcher has not published yet are promoted in the ledger only: priority
    orders a tenant's own work there."""
    now = ledger.clock()
    cutoff = now - timedelta(seconds=aging_s)
    promoted = 0
    if fair:
        # one level per aging period waited: a job promoted twice has waited three periods
        due = [job_id for job_id, queued_at, raised in ledger.waiting_too_long(cutoff, unpublished=True)
               if queued_at < now - timedelta(seconds=aging_s * (1 + raised))]
        if due:
            ledger.promote(due)
            promoted += len(due)
    waiting = ledger.waiting_too_long(cutoff)
    if waiting:
        ledger.promote(waiting)
        republish(ledger, publisher, waiting, micro_batch=micro_batch)
    return promoted + len(waiting)


def tick(ledger, publisher, config, *, holder: str) -> dict | None:
    """One round of maintenance if this process holds the lease (None otherwise)."""
    if not ledger.acquire_lock(LOCK, holder, ttl_s=config.maintenance_s * 3):
        return None
    done = reap(ledger, publisher, max_attempts=config.max_attempts, micro_batch=config.micro_batch)
    fair = config.scheduler == "fair"
    done.update(reconcile(ledger, publisher, grace_s=max(5.0, config.maintenance_s), micro_batch=config.micro_batch,
                          fair=fair))
    done["aged"] = age_waiting_jobs(ledger, publisher, aging_s=config.aging_s, micro_batch=config.micro_batch,
                                    fair=fair)
    return done
