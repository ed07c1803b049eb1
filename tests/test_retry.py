"""The retry policy as a pure function: the worker and the reaper decide through it."""

from farm.errors import InputError, NotFound
from farm.fleet import retry
from farm.jobs import states


def test_bad_input_fails_at_once():
    d = retry.decide(failures_before=0, max_attempts=3, backoff_s=5, error="model: unknown", permanent=True)
    assert (d.action, d.outcome, d.error, d.delay_s) == (retry.FAIL, states.ATTEMPT_FAILED, "model: unknown", 0.0)
    assert retry.is_permanent(InputError("model", "unknown")) and retry.is_permanent(NotFound("x"))
    assert not retry.is_permanent(OSError("disk full")) and not retry.is_permanent(TimeoutError())


def test_backoff_doubles_until_the_attempts_are_used_up():
    decisions = [retry.decide(failures_before=n, max_attempts=4, backoff_s=5, error="OSError: x") for n in range(4)]
    assert [d.action for d in decisions] == [retry.REQUEUE, retry.REQUEUE, retry.REQUEUE, retry.FAIL]
    assert [d.delay_s for d in decisions[:3]] == [5, 10, 20]
    assert decisions[3].error == "OSError: x (attempt 4 of 4)"
    assert all(d.outcome == states.ATTEMPT_RETRY for d in decisions)


def test_a_timeout_keeps_its_outcome():
    d = retry.decide(failures_before=2, max_attempts=3, backoff_s=1, error="time limit", outcome=states.ATTEMPT_TIMEOUT)
    assert (d.action, d.outcome) == (retry.FAIL, states.ATTEMPT_TIMEOUT)


def test_a_lapsed_lease_requeues_at_once_then_fails():
    first = retry.lease_lapsed(failures_before=0, max_attempts=2)
    assert (first.action, first.delay_s, first.outcome) == (retry.REQUEUE, 0.0, states.ATTEMPT_LOST)
    last = retry.lease_lapsed(failures_before=1, max_attempts=2)
    assert (last.action, last.error) == (retry.FAIL, "worker lost 2 times (lease lapsed)")


def test_describe():
    assert retry.describe(InputError("steps", "12 is outside 1..8")) == "steps: 12 is outside 1..8"
    assert retry.describe(ConnectionError("reset")) == "ConnectionError: reset"


def test_the_failed_outcomes_are_the_ones_that_use_up_attempts():
    assert states.FAILED_OUTCOMES == {"failed", "retry", "lost", "timeout"}
    assert not {states.ATTEMPT_DRAINED, states.ATTEMPT_CANCELLED} & states.FAILED_OUTCOMES
    assert set(states.FAILED_OUTCOMES) <= set(states.ATTEMPT_OUTCOMES)


def test_the_lost_worker_rule():
    assert states.worker_shown_state("active", 5) == "active"
    assert states.worker_shown_state("active", states.LOST_AFTER_S + 1) == "lost"
    assert states.worker_shown_state("draining", 100) == "lost"
    assert states.worker_shown_state("stopped", 1000) == "stopped"
