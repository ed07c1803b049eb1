"""A doorbell for waiters: a worker that records jobs of a batch as done rings the batch's bell (a
Redis PUBLISH on the broker's own connection), and a client waiting on the batch wakes at once to
read the ledger again instead of sleeping out its poll interval.

The ledger stays the truth: a ring carries no state, only "look again". A ring that is lost (no
subscriber yet, a dropped connection, a broker that is not Redis) costs latency, never
correctness: the waiter still polls, just less often. Ringing is best-effort and never fails the
work that rang.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

log = logging.getLogger("farm.doorbell")


def channel(base_queue: str, batch_id: str) -> str:
    """The pub/sub channel of one batch (namespaced by the farm's queue, as its queues are)."""
    return f"{base_queue}.doorbell.{batch_id}"


def ring(client, base_queue: str, batch_ids: Iterable[str]) -> int:
    """Ring each batch's bell once; how many rings were sent (0 when the broker cannot)."""
    sent = 0
    try:
        pipe = client.pipeline(transaction=False)
        for batch_id in dict.fromkeys(batch_ids):
            pipe.publish(channel(base_queue, batch_id), b"1")
            sent += 1
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - best-effort: the waiter's poll covers a lost ring
        log.debug("doorbell not rung: %s", exc)
        return 0
    return sent


class Listener:
    """A subscription to one batch's bell; ``wait(timeout)`` returns True when it rang (or False
    after ``timeout``). Without a pub/sub client it simply sleeps: the caller polls as before."""

    def __init__(self, client, base_queue: str, batch_id: str):
        self.pubsub = None
        if client is None:
            return
        try:
            self.pubsub = client.pubsub(ignore_subscribe_messages=True)
            self.pubsub.subscribe(channel(base_queue, batch_id))
        except Exception as exc:  # noqa: BLE001 - no bell: poll
            log.debug("no doorbell for %s: %s", batch_id, exc)
            self.pubsub = None

    def wait(self, timeout: float) -> bool:
        if self.pubsub is None:
            time.sleep(timeout)
            return False
        deadline = time.monotonic() + timeout
        try:
            rang, idle = False, 0
            while True:
                left = deadline - time.monotonic()
                if rang or left <= 0:
                    # drain every ring already here: one read of the ledger answers them all
                    while self.pubsub.get_message(timeout=0.0) is not None:
                        pass
                    return rang
                message = self.pubsub.get_message(timeout=left)
                if message is not None:
                    rang = True
                    continue
                idle += 1  # an ignored subscribe confirmation, or the wait ran out (the deadline says)
                if idle > 3:
                    time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
        except Exception as exc:  # noqa: BLE001 - the connection dropped: sleep out the rest, poll
            log.debug("doorbell lost: %s", exc)
            self.close()
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception:  # noqa: BLE001
                pass
            self.pubsub = None
