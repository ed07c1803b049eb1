"""The doorbell (issue 22): a worker's ring wakes a waiting client at once; a lost ring or no
broker costs only latency (the waiter polls), never correctness."""

import threading
import time

import pytest

from farm.config import load_config
from farm.fleet.dispatch import Publisher
from farm.fleet.doorbell import Listener, channel, ring

pytestmark = pytest.mark.redis


@pytest.fixture
def publisher(redis_server, tmp_path):
    cfg = load_config({"FARM_HOME": str(tmp_path), "FARM_BROKER_URL": redis_server.url, "FARM_QUEUE": "bell"})
    publisher = Publisher(cfg, redis_server.url)
    yield publisher
    publisher.close()


def test_a_ring_wakes_the_waiter_at_once(publisher):
    listener = publisher.listener("b1")
    try:
        threading.Timer(0.2, lambda: publisher.ring(["b1", "b1", "other"])).start()
        started = time.monotonic()
        assert listener.wait(10.0) is True
        assert time.monotonic() - started < 2.0  # woken by the ring, not by the 10 s timeout
        assert listener.wait(0.2) is False  # the duplicate ring was drained with the first
    finally:
        listener.close()


def test_another_batchs_ring_does_not_wake_it_and_the_timeout_holds(publisher):
    listener = publisher.listener("b2")
    try:
        publisher.ring(["someone-else"])
        started = time.monotonic()
        assert listener.wait(0.3) is False
        assert time.monotonic() - started >= 0.29
    finally:
        listener.close()


def test_without_a_broker_the_listener_sleeps_and_ringing_sends_nothing():
    started = time.monotonic()
    assert Listener(None, "q", "b").wait(0.1) is False and time.monotonic() - started >= 0.09

    class Broken:
        def pipeline(self, **_):
            raise ConnectionError("down")

    assert ring(Broken(), "q", ["b"]) == 0  # best-effort: never raises into the work that rang
    assert channel("farm", "abc") == "farm.doorbell.abc"


def test_a_wait_on_a_stopped_local_farm_starts_no_broker(tmp_path, monkeypatch):
    """Waiting on a finished batch of a farm home whose private Redis is down answers from the
    ledger alone: the doorbell is skipped, nothing is started to listen."""
    import farm
    from farm.fleet.localfarm import redis_alive

    monkeypatch.delenv("FARM_BROKER_URL", raising=False)
    client = farm.Farm.connect({"FARM_HOME": str(tmp_path / "home")})
    try:
        planned = client.plan("a red circle", model="tiny-sd", seeds="1-2")
        made = client.ledger.create_batch(specs=planned.specs, spec=planned.record(), request_digest="d",
                                          base_seed=1, axes=planned.axes)
        client.cancel(made.id)
        assert client.wait(made.id, timeout=5)["cancelled"] == 2
        assert not redis_alive(client.config) and client._publisher is None
    finally:
        client.close()
