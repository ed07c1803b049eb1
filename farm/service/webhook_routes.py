"""``/v1/webhooks`` (issue 25): a tenant's own webhook endpoints, over the API as from the CLI.

A key with ``submit`` adds, lists and removes its tenant's endpoints (an admin key may name another
tenant); the signing secret is in the answer to the POST only. Another tenant's endpoint is a 404."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from farm.errors import InputError
from farm.service import problems
from farm.service.uploads import read_json
from farm.tenancy.keys import Principal

WEBHOOK_ID = Path(ge=1, le=2**63 - 1)
READS = problems.responses(400, 401, 403, 404, 429)
WRITES = problems.responses(400, 401, 403, 404, 409, 413, 429)
WEBHOOK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["url"], "additionalProperties": False,
    "properties": {"url": {"type": "string", "maxLength": 2000},
                   "events": {"type": "array", "items": {"type": "string", "maxLength": 32}, "maxItems": 16},
                   "batch": {"type": "string", "maxLength": 64},
                   "tenant": {"type": "string", "maxLength": 64, "description": "admin keys only"}}}}}}}


def webhook_routes(app: FastAPI, farm_api, need) -> None:
    def tenant_of(p: Principal) -> str | None:
        return None if p.admin else p.tenant

    @app.post("/v1/webhooks", tags=["webhooks"], summary="Add a webhook endpoint (its secret is shown once)",
              responses=WRITES, openapi_extra=WEBHOOK_BODY)
    async def add(request: Request, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        body = await read_json(request)
        unknown = sorted(set(body) - {"url", "events", "batch", "tenant"})
        if unknown:
            raise InputError(unknown[0], "unknown field")
        url, events, batch = body.get("url"), body.get("events"), body.get("batch")
        if not isinstance(url, str):
            raise InputError("url", "required: the https:// URL to POST events to")
        if events is not None and not (isinstance(events, list) and all(isinstance(e, str) for e in events)):
            raise InputError("events", "a list of event types")
        if batch is not None and not isinstance(batch, str):
            raise InputError("batch", "a batch id")
        tenant = body.get("tenant", p.tenant)
        if not isinstance(tenant, str) or (tenant != p.tenant and not p.admin):
            raise InputError("tenant", "only an admin key names another tenant")
        return await run_in_threadpool(lambda: farm_api.add_webhook(url, tenant=tenant, events=events, batch=batch))

    @app.get("/v1/webhooks", tags=["webhooks"], summary="The tenant's webhook endpoints", responses=READS)
    def listing(p: Principal = Depends(need("read"))) -> list[dict]:
        return farm_api.webhooks(tenant_of(p))

    @app.delete("/v1/webhooks/{webhook_id}", tags=["webhooks"], summary="Remove a webhook endpoint",
                responses=WRITES)
    def remove(webhook_id: int = WEBHOOK_ID, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        return farm_api.remove_webhook(webhook_id, tenant_of(p))

    @app.get("/v1/webhooks/{webhook_id}/deliveries", tags=["webhooks"], summary="Delivery attempts, newest first",
             responses=READS)
    def deliveries(webhook_id: int = WEBHOOK_ID, failed: bool = False, limit: int = Query(100, ge=1, le=1000),
                   p: Principal = Depends(need("read"))) -> list[dict]:
        return farm_api.webhook_deliveries(webhook_id, tenant=tenant_of(p), failed=failed, limit=limit)
