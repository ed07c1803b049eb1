"""``GET /v1/events`` (issue 25): the ledger's outbox as Server-Sent Events, or a page of JSON.

With ``Accept: text/event-stream`` the answer is a stream that follows the outbox: each event as
``id: N`` / ``event: TYPE`` / ``data: JSON``, a comment every few seconds to keep proxies from
closing it, and resumable: a client that reconnects with ``Last-Event-ID`` (browsers' EventSource
does so by itself) gets everything after that id, nothing twice. Without it, the events after
``after`` as one JSON page (a client without streaming, and the contract fuzz, which would
otherwise read a stream forever). A key sees its own tenant's events (admin: all), optionally one
batch's (another tenant's batch is a 404, as everywhere)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from farm.errors import InputError
from farm.service import problems
from farm.tenancy.keys import Principal

POLL_S = 0.1  # how often a stream reads the outbox: the SSE latency target is 1 s
HEARTBEAT_S = 10.0
PAGE = 500
EVENTS_DOC = {200: {"description": "Events, oldest first: a JSON page, or a text/event-stream that follows",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
              **problems.responses(400, 401, 403, 404, 429)}


def sse(event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.as_dict(), separators=(',', ':'))}\n\n"


def event_routes(app: FastAPI, farm_api, need, owned_batch) -> None:
    ledger = farm_api.ledger
    throughput_route(app, farm_api, need)

    @app.get("/v1/events", tags=["events"], summary="The tenant's events: SSE (Accept: text/event-stream) or JSON",
             responses=EVENTS_DOC, response_model=None)
    async def events(request: Request, batch: str | None = Query(None, pattern=r"^[A-Za-z0-9_-]{1,64}$"),
                     after: int | None = Query(None, ge=0, le=2**63 - 1, description="Events after this id"),
                     last_event_id: str | None = Header(None, max_length=32),
                     p: Principal = Depends(need("read"))) -> Any:
        if batch is not None:
            await run_in_threadpool(owned_batch, p, batch)
        tenant = None if p.admin else p.tenant
        if last_event_id is not None and last_event_id.strip():
            try:
                after = int(last_event_id)
            except ValueError:
                raise InputError("Last-Event-ID", "an event id (a number)") from None
            if after < 0:
                raise InputError("Last-Event-ID", "an event id (a number)")
        if "text/event-stream" not in request.headers.get("accept", ""):
            since = after or 0
            page = await run_in_threadpool(lambda: ledger.events_after(since, tenant=tenant, batch=batch, limit=PAGE))
            last = page[-1].id if page else since
            return JSONResponse({"events": [e.as_dict() for e in page], "last_id": last})
        start = after if after is not None else await run_in_threadpool(ledger.last_event_id)
        return StreamingResponse(_follow(request, ledger, start, tenant, batch), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def throughput_route(app: FastAPI, farm_api, need) -> None:
    @app.get("/v1/throughput", tags=["events"], summary="Images finished per minute (the tenant's; admin: all)",
             responses=problems.responses(400, 401, 403, 429))
    def throughput(since: str = Query("1h", pattern=r"^[0-9]{1,4}[mhd]$", description="30m, 1h, 2d"),
                   p: Principal = Depends(need("read"))) -> dict[str, Any]:
        from datetime import datetime, timezone

        from farm.results.stats import parse_since

        start = parse_since(since, datetime.now(timezone.utc))
        if (datetime.now(timezone.utc) - start).total_seconds() > 7 * 86400:
            raise InputError("since", "at most 7d")
        bucket = 60 if (datetime.now(timezone.utc) - start).total_seconds() <= 6 * 3600 else 3600
        rows = farm_api.ledger.throughput(start, tenant=None if p.admin else p.tenant, bucket_s=bucket)
        return {"since": start.isoformat(), "bucket_s": bucket, "buckets": rows}


async def _follow(request: Request, ledger, after: int, tenant: str | None, batch: str | None):
    # the position first: a client that reads it knows it will miss nothing after this point
    yield f"retry: 1000\n: from {after}\n\n"
    last, quiet_since = after, time.monotonic()
    while not await request.is_disconnected():
        page = await run_in_threadpool(ledger.events_after, last, tenant=tenant, batch=batch, limit=PAGE)
        for event in page:
            yield sse(event)
            last = event.id
        if page:
            quiet_since = time.monotonic()
            continue
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)
