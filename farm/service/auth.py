"""Who is asking: ``Authorization: Bearer <key>`` on every route but the health checks, checked
against the ledger (farm.tenancy.keys), scopes enforced per route, and failed attempts limited per
client address (too many in a minute: 429 until the minute has passed)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from fastapi import Request

from farm.service.problems import HTTPProblem
from farm.tenancy.keys import Principal

FAILURES_PER_MINUTE = 20
WINDOW_S = 60.0


class FailureLimiter:
    """Failed authentications per client address, in a sliding minute."""

    def __init__(self, limit: int = FAILURES_PER_MINUTE, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self.failures: dict[str, deque] = {}
        self.lock = threading.Lock()

    def _recent(self, address: str) -> deque:
        now = self.clock()
        times = self.failures.setdefault(address, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def blocked(self, address: str) -> bool:
        with self.lock:
            return len(self._recent(address)) >= self.limit

    def failed(self, address: str) -> None:
        with self.lock:
            self._recent(address).append(self.clock())
            if len(self.failures) > 100_000:  # many addresses: forget the quiet ones
                for key in [k for k, v in self.failures.items() if not v][:50_000]:
                    self.failures.pop(key, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticator(farm, limiter: FailureLimiter):
    """A dependency factory: ``need("read")`` answers the request's Principal or a problem."""

    def need(scope: str):
        def check(request: Request) -> Principal:
            address = client_address(request)
            if limiter.blocked(address):
                raise HTTPProblem(429, "too many failed authentications from this address; wait a minute",
                                  {"Retry-After": str(int(WINDOW_S))})
            header = request.headers.get("authorization", "")
            scheme, _, key = header.partition(" ")
            principal = farm.authenticate(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
            if principal is None:
                limiter.failed(address)
                raise HTTPProblem(401, "a valid API key is needed: Authorization: Bearer farm_...",
                                  {"WWW-Authenticate": "Bearer"})
            if not principal.may(scope):
                raise HTTPProblem(403, f"this key may not {scope} (its scopes: {', '.join(sorted(principal.scopes))})")
            return principal

        return check

    return need
