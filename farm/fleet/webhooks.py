"""Delivering the outbox to webhooks (issue 25), at least once, in order per endpoint.

Each endpoint has a cursor in the ledger: the last event it acknowledged (any 2xx). The deliverer
POSTs the events after it, one at a time, and moves the cursor only after the receiver answered;
a failure is logged and the endpoint waits out an exponential backoff (capped, so a receiver that
was down for ten minutes gets everything within a minute of coming back). A crash at any point
repeats at most the event in flight, with the same ``webhook-id``, which receivers deduplicate on.
One deliverer runs in the fleet at a time: it holds the ledger's ``webhooks`` lease (farm serve
runs one; a second server waits), so ordering holds across restarts and replicas.

Requests are signed as Standard Webhooks says: ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` with the endpoint's ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from farm.errors import FarmError
from farm.fleet import outbound

LOCK = "webhooks"
LEASE_S = 10.0  # a deliverer that died frees the lease this fast
POLL_S = 0.2  # how often the outbox is read when nothing is due (p99 target: 5 s from the write)
TIMEOUT_S = 10.0
MAX_BACKOFF_S = 60.0
PAGE = 100
PARALLEL = 8  # endpoints served at once: one slow receiver does not hold up the others


def message_id(event_id: int) -> str:
    """The ``webhook-id``: the event's, so a repeated delivery carries the same one."""
    return f"evt_{event_id}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(event) -> bytes:
    """The Standard Webhooks payload shape: type, timestamp, data."""
    return json.dumps({"type": event.type, "timestamp": event.created_at.isoformat(),
                       "data": {"event": event.id, "tenant": event.tenant, **event.body}},
                      separators=(",", ":")).encode()


def backoff_s(failures: int) -> float:
    """1, 2, 4, ... seconds after the 1st, 2nd, 3rd failure in a row, at most MAX_BACKOFF_S."""
    return min(MAX_BACKOFF_S, 2.0 ** max(failures - 1, 0))


class Deliverer:
    """``Deliverer(ledger, allowed_nets).run(stop)`` delivers until ``stop`` is set."""

    def __init__(self, ledger, allowed_nets: tuple = (), *, holder: str | None = None, clock=time.time):
        self.ledger, self.allowed, self.clock = ledger, allowed_nets, clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.busy: set[int] = set()
        self.lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="farm-webhook") as pool:
            while not stop.is_set():
                try:
                    if not self.ledger.acquire_lock(LOCK, self.holder, LEASE_S):
                        stop.wait(LEASE_S / 4)
                        continue
                    for endpoint in self.ledger.due_webhooks():
                        with self.lock:
                            if endpoint.id in self.busy:
                                continue
                            self.busy.add(endpoint.id)
                        pool.submit(self._serve, endpoint, stop)
                except FarmError:
                    stop.wait(1.0)  # the ledger is away: try again, nothing is lost
                stop.wait(POLL_S)

    def _serve(self, endpoint, stop: threading.Event) -> None:
        try:
            self.deliver_pending(endpoint, stop)
        except FarmError:
            pass  # the ledger is away: the cursor is where it was, the next round goes on from there
        finally:
            with self.lock:
                self.busy.discard(endpoint.id)

    def deliver_pending(self, endpoint, stop: threading.Event | None = None) -> int:
        """Deliver the endpoint's events after its cursor, in order, until one fails; how many went."""
        sent = 0
        # ids are in commit order: every event up to the horizon is visible to the read below, so
        # an endpoint whose filter passes over them can move its cursor there (its next read is short)
        horizon = self.ledger.last_event_id()
        events = self.ledger.pending_events(endpoint, limit=PAGE)
        if not events:
            if horizon > endpoint.cursor:
                self.ledger.skip_to(endpoint.id, horizon)
            return 0
        secret = self.ledger.webhook_secret(endpoint.id)
        for event in events:
            if stop is not None and stop.is_set():
                break
            if not self.deliver(endpoint, secret, event):
                return sent
            sent += 1
        if len(events) < PAGE and sent == len(events):
            self.ledger.skip_to(endpoint.id, horizon)
        return sent

    def deliver(self, endpoint, secret: str, event) -> bool:
        """One POST; logged, and the cursor moved on success or the backoff set on failure."""
        body = payload(event)
        msg_id, timestamp = message_id(event.id), int(self.clock())
        headers = {"Content-Type": "application/json", "User-Agent": "farm-webhooks",
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, msg_id, timestamp, body)}
        started = time.monotonic()
        status, error = None, None
        try:
            target = outbound.check_url(endpoint.url, self.allowed)  # again: DNS may have changed since
            status, answer = outbound.post(target, body, headers, TIMEOUT_S)
            if not 200 <= status < 300:
                error = f"HTTP {status}: {answer[:200].decode(errors='replace')}"
        except FarmError as exc:
            error = str(exc)
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = error is None
        self.ledger.record_delivery(endpoint.id, event.id, ok=ok, status_code=status, error=error,
                                    duration_ms=(time.monotonic() - started) * 1000,
                                    retry_in_s=0.0 if ok else backoff_s(endpoint.failures + 1))
        return ok


def start(ledger, allowed_nets: tuple) -> tuple[threading.Thread, threading.Event]:
    """Run a deliverer in a daemon thread of this process (farm serve)."""
    stop = threading.Event()
    thread = threading.Thread(target=Deliverer(ledger, allowed_nets).run, args=(stop,), daemon=True,
                              name="farm-webhooks")
    thread.start()
    return thread, stop
