"""The retry policy, pure: what happens to a job after a failed attempt.

Used by the worker (a render or a store failed) and by fleet maintenance (a lease lapsed), so a
job is treated the same whoever notices its failure. Bad input fails at once: retrying cannot
help. Anything else goes back to the queue after an exponential backoff until the job has used up
its attempts; then it fails for good, with the count in its error.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.errors import FarmError, InputError, NotFound
from farm.jobs import states

REQUEUE = "requeue"
FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    action: str  # REQUEUE or FAIL
    error: str  # what the job's last_error says
    outcome: str  # how the attempt is recorded (states.ATTEMPT_*)
    delay_s: float = 0.0  # a requeue's backoff


def is_permanent(exc: BaseException) -> bool:
    """A failure no retry can fix: the job asked for something that does not exist or is invalid."""
    return isinstance(exc, (InputError, NotFound))


def describe(exc: BaseException) -> str:
    """The one-line error recorded on the job."""
    return str(exc) if isinstance(exc, FarmError) else f"{type(exc).__name__}: {exc}"


def decide(*, failures_before: int, max_attempts: int, backoff_s: float, error: str,
           outcome: str = states.ATTEMPT_RETRY, permanent: bool = False) -> Decision:
    """``failures_before``: attempts of this job that already ended badly (states.FAILED_OUTCOMES),
    not counting this one."""
    if permanent:
        return Decision(FAIL, error, states.ATTEMPT_FAILED)
    failures = failures_before + 1
    if failures >= max_attempts:
        return Decision(FAIL, f"{error} (attempt {failures} of {max_attempts})", outcome)
    return Decision(REQUEUE, error, outcome, backoff_s * 2 ** (failures - 1))


def lease_lapsed(*, failures_before: int, max_attempts: int) -> Decision:
    """A running job whose worker stopped renewing its lease (died, hung, partitioned). It goes
    back at once: the worker, not the job, is the likely culprit."""
    failures = failures_before + 1
    if failures >= max_attempts:
        return Decision(FAIL, f"worker lost {failures} times (lease lapsed)", states.ATTEMPT_LOST)
    return Decision(REQUEUE, "lease lapsed: worker lost", states.ATTEMPT_LOST, 0.0)
