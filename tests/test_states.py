"""The transition table."""

from farm.jobs import states


def test_transitions():
    assert states.can("claim", states.QUEUED) and not states.can("claim", states.RUNNING)
    assert states.can("cancel", states.RUNNING) and not states.can("cancel", states.SUCCEEDED)
    assert states.transition("retry") == (frozenset({states.FAILED, states.CANCELLED}), states.QUEUED)
    for event, (sources, target) in states.TRANSITIONS.items():
        assert target in states.STATES and sources <= set(states.STATES), event
    assert not any(states.can(e, states.SUCCEEDED) for e in states.TRANSITIONS)
