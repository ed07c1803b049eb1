"""The HTTP API: ``create_app(farm)`` serves one ``farm.Farm`` (the operator's library API) to many
tenants. Routes are versioned (``/v1``), described at ``/openapi.json`` and ``/docs``; every answer
is JSON (or an image, or a zip), every error a problem document with the CLI's one-line message.

Isolation is enforced here, on every route that takes an id: a batch or job of another tenant is
looked up with the key's tenant and answers 404 like an unknown id; submissions are planned with
the tenant's policy (farm.tenancy.policy), so ``job:ID``, ``batch:ID`` and ``input:<sha256>``
inside them resolve among the tenant's own things only and no path on this machine can be named.
Admin keys see every tenant.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path as FilePath
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

import farm
from farm.errors import InputError, NotFound
from farm.jobs import states
from farm.service import problems
from farm.service.auth import FailureLimiter, authenticator
from farm.service.uploads import read_json, spool
from farm.tenancy.keys import Principal
from farm.tenancy.policy import Policy
from farm.tenancy.quotas import LIMITS

REGISTRIES = {"models": "model", "adapters": "adapter", "embeddings": "embedding", "controlnets": "controlnet"}
ANY_JSON: dict = {"type": "object", "additionalProperties": True}
SUBMISSION_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": True,
    "description": "The fields of a spec file (farm submit --spec): prompt or prompts, model, recipe, seeds, "
                   "variants, steps, guidance, size, adapters, axes, wildcards, image kinds and inputs "
                   "(input:<sha256>, job:ID, s3:// under the tenant's prefixes), plus priority (0..9)."}}}}}
DISTILL_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": True, "required": ["teacher", "data", "name"],
    "description": "farm distill's options: teacher, data (batch:ID or an allowed s3:// prefix), name, and "
                   "steps, rank, skip, guidance_range, batch_size, lr, checkpoint_every, eval_samples, full, "
                   "resolution, seed, priority."}}}}}
ARCHIVE_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary",
    "description": "A zip or tar archive: NAME.png + NAME.txt pairs, or a metadata.jsonl"}}}}}
TENANT_SETTINGS = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
    "weight": {"type": "number", "minimum": 0.01, "maximum": 1000},
    "quotas": {"type": "object", "additionalProperties": False, "properties": {
        name: {"type": ["number", "null"], "minimum": 0} for name in LIMITS}}}}
MAX_DATASET_BYTES = 4 << 30  # an uploaded dataset archive
MAX_MODEL_BYTES = 16 << 30  # an uploaded weight file (SDXL single-file checkpoints are ~7 GB)
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/webp")}}}

JobState = Literal[states.STATES]  # type: ignore[valid-type]  # the job states, as the schema's enum
Grouping = Literal["model", "recipe", "device", "worker", "tenant"]
UploadKind = Literal["image", "mask"]
BATCH_ID = Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", max_length=64)
JOB_ID = Path(ge=1, le=2**63 - 1)
NAME = Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
READS = problems.responses(400, 401, 403, 404, 429)
WRITES = problems.responses(400, 401, 403, 404, 409, 413, 429, 503)


def create_app(farm_api) -> FastAPI:
    app = FastAPI(title="farm", version=farm.__version__, openapi_url="/openapi.json", docs_url="/docs",
                  redoc_url=None, description="A render farm for few-step diffusion, shared over HTTP. "
                  "Authenticate with `Authorization: Bearer <key>` (`farm keys create`).")
    problems.install(app)
    need = authenticator(farm_api, FailureLimiter())
    ledger = farm_api.ledger
    app.state.farm = farm_api

    def scope(p: Principal) -> str | None:
        return None if p.admin else p.tenant

    def policy(p: Principal) -> Policy:
        tenant = ledger.tenant(p.tenant)
        return Policy(tenant=p.tenant, remote=True, s3_prefixes=tuple(tenant.s3_prefixes) if tenant else ())

    def owned(p: Principal, batch_id: str, read):
        """``read(batch_id)`` (its first value a BatchInfo) if the key may see that batch; another
        tenant's batch answers as an unknown one."""
        try:
            found = read(batch_id)
        except NotFound:
            found = None
        info = found[0] if isinstance(found, tuple) else found
        if info is None or (not p.admin and info.tenant != p.tenant):
            raise NotFound(f"no batch {batch_id!r}")
        return found

    def owned_batch(p: Principal, batch_id: str):
        return owned(p, batch_id, ledger.get_batch)

    def owned_job(p: Principal, job_id: int):
        [view] = ledger.list_jobs(job_id=job_id, tenant=scope(p)) or [None]
        if view is None:
            raise NotFound(f"no job {job_id}")
        return view

    # -- health --------------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="The process is up (no key needed)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The ledger and the broker answer (no key needed)",
             responses={503: {"description": "Not ready"}})
    def readyz() -> JSONResponse:
        checks = {}
        try:
            ledger.batches(1)
            checks["ledger"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["ledger"] = f"unavailable: {type(exc).__name__}"
        try:
            client = farm_api.publisher.doorbell_client()
            checks["broker"] = "ok" if client is not None and client.ping() else "unavailable"
        except Exception as exc:  # noqa: BLE001
            checks["broker"] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503)

    # -- batches -----------------------------------------------------------------------------------------
    @app.post("/v1/batches", tags=["batches"], summary="Submit a batch (the fields of a spec file)",
              responses=WRITES, openapi_extra=SUBMISSION_BODY)
    async def submit(request: Request, dry_run: bool = Query(False, description="Validate and estimate only"),
                     force: bool = Query(False, description="Render even jobs whose image exists"),
                     idempotency_key: str | None = Header(None, max_length=128),
                     p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        body = await read_json(request)
        priority = body.pop("priority", 0)
        planned = await run_in_threadpool(lambda: farm_api.plan(spec_data=body, priority=priority, policy=policy(p)))
        if dry_run:
            return await run_in_threadpool(farm_api.estimate, planned, force=force)
        result = await run_in_threadpool(lambda: farm_api.submit_plan(planned, key=idempotency_key, force=force,
                                                                      tenant=p.tenant))
        return result.as_dict()

    @app.get("/v1/batches", tags=["batches"], summary="Recent batches, newest first", responses=READS)
    def list_batches(limit: int = Query(50, ge=1, le=1000), p: Principal = Depends(need("read"))) -> list[dict]:
        return [s.as_dict() for s in ledger.batches(limit, tenant=scope(p))]

    @app.get("/v1/batches/{batch_id}", tags=["batches"], summary="A batch with its counts per state",
             responses=READS)
    def get_batch(batch_id: str = BATCH_ID, p: Principal = Depends(need("read"))) -> dict[str, Any]:
        info, counts, first_started = owned(p, batch_id, ledger.batch_status)
        from farm.results.progress import eta_seconds

        done = sum(counts[s] for s in states.TERMINAL)
        elapsed = (datetime.now(timezone.utc) - first_started).total_seconds() if first_started else 0.0
        eta = eta_seconds(counts[states.SUCCEEDED], info.job_count - done, elapsed)
        return {"batch": info.id, "created_at": info.created_at.isoformat(), "state": info.state,
                "priority": info.priority, "model": info.model, "recipe": info.recipe, "jobs": info.job_count,
                "counts": counts, "done": done, "base_seed": info.base_seed, "tenant": info.tenant,
                "eta_s": None if eta is None else round(eta, 1)}

    @app.post("/v1/batches/{batch_id}/cancel", tags=["batches"], summary="Cancel queued (and running) jobs",
              responses=WRITES)
    def cancel(batch_id: str = BATCH_ID, running: bool = False, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        owned_batch(p, batch_id)
        return {"batch": batch_id, "cancelled": farm_api.cancel(batch_id, running=running)}

    @app.post("/v1/batches/{batch_id}/retry", tags=["batches"], summary="Queue failed (and cancelled) jobs again",
              responses=WRITES)
    def retry(batch_id: str = BATCH_ID, failed_only: bool = False, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        owned_batch(p, batch_id)
        done = farm_api.retry(batch_id, failed_only=failed_only)
        return {"batch": batch_id, "requeued": len(done.job_ids), "job_ids": done.job_ids, "messages": done.messages}

    @app.post("/v1/batches/{batch_id}/pause", tags=["batches"], summary="Stop starting the batch's jobs",
              responses=WRITES)
    def pause(batch_id: str = BATCH_ID, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        owned_batch(p, batch_id)
        farm_api.pause(batch_id)
        return {"batch": batch_id, "state": states.BATCH_PAUSED}

    @app.post("/v1/batches/{batch_id}/resume", tags=["batches"], summary="Resume a paused batch", responses=WRITES)
    def resume(batch_id: str = BATCH_ID, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        owned_batch(p, batch_id)
        done = farm_api.resume(batch_id)
        return {"batch": batch_id, "state": states.BATCH_ACTIVE, "requeued": len(done.job_ids),
                "job_ids": done.job_ids, "messages": done.messages}

    @app.get("/v1/batches/{batch_id}/jobs", tags=["jobs"], summary="A batch's jobs", responses=READS)
    def batch_jobs(batch_id: str = BATCH_ID, state: JobState | None = None,
                   limit: int | None = Query(None, ge=1, le=100_000),
                   p: Principal = Depends(need("read"))) -> list[dict]:
        owned_batch(p, batch_id)
        return [v.as_dict() for v in ledger.list_jobs(batch_id=batch_id, state=state, limit=limit)]

    @app.get("/v1/batches/{batch_id}/images.zip", tags=["images"], summary="A batch's images as a streamed zip",
             responses={**READS, 200: {"content": {"application/zip": {}}, "description": "The images"}})
    def batch_zip(batch_id: str = BATCH_ID, p: Principal = Depends(need("read"))) -> StreamingResponse:
        owned_batch(p, batch_id)
        rows = ledger.artifacts(batch_id)
        if not rows:
            raise NotFound(f"batch {batch_id} has no stored images yet")
        from farm.results.artifacts import ArtifactReader, output_name

        reader = ArtifactReader(farm_api.config.s3_endpoint_url)

        def chunks():
            sink = _Sink()
            with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
                for job, artifact in rows:  # PNGs are compressed already: stored, read one at a time
                    archive.writestr(output_name(job.index, job.spec.seed, artifact.key),
                                     reader.read(artifact.store_url, artifact.key, artifact.sha256))
                    yield sink.take()
            yield sink.take()

        return StreamingResponse(chunks(), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{batch_id}.zip"'})

    @app.get("/v1/batches/{batch_id}/sheet.png", tags=["images"], summary="The batch's contact sheet",
             responses={**READS, 200: {"content": {"image/png": {}}, "description": "The sheet"}})
    def batch_sheet(batch_id: str = BATCH_ID, cols: str | None = Query(None, max_length=64),
                    rows: str | None = Query(None, max_length=64), p: Principal = Depends(need("read"))) -> Response:
        owned_batch(p, batch_id)
        with tempfile.TemporaryDirectory(prefix="farm-sheet-") as tmp:
            out = FilePath(tmp) / "sheet.png"
            farm_api.contact_sheet(batch_id, out, cols=cols, rows=rows)
            return Response(out.read_bytes(), media_type="image/png")

    # -- jobs and images -----------------------------------------------------------------------------
    @app.get("/v1/jobs", tags=["jobs"], summary="Jobs, newest batches' first, with filters", responses=READS)
    def list_jobs(batch: str | None = Query(None, pattern=r"^[A-Za-z0-9_-]{1,64}$"),
                  state: JobState | None = None,
                  limit: int = Query(100, ge=1, le=10_000), p: Principal = Depends(need("read"))) -> list[dict]:
        if batch is not None:
            owned_batch(p, batch)
        return [v.as_dict() for v in ledger.list_jobs(batch_id=batch, state=state, limit=limit, tenant=scope(p))]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A job with its timings, attempts and image",
             responses=READS)
    def get_job(job_id: int = JOB_ID, p: Principal = Depends(need("read"))) -> dict[str, Any]:
        return owned_job(p, job_id).as_dict()

    @app.get("/v1/jobs/{job_id}/image", tags=["images"], summary="A job's PNG (ETag: its sha256)",
             responses={**READS, 200: {"content": {"image/png": {}}, "description": "The image"},
                        304: {"description": "Not modified"}})
    def job_image(job_id: int = JOB_ID, if_none_match: str | None = Header(None),
                  p: Principal = Depends(need("read"))) -> Response:
        view = owned_job(p, job_id)
        if view.artifact is None:
            raise NotFound(f"job {job_id} has no stored image (state {view.state})")
        etag = f'"{view.artifact.sha256}"'
        if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers={"ETag": etag})
        from farm.results.artifacts import ArtifactReader

        data = ArtifactReader(farm_api.config.s3_endpoint_url).read(view.artifact.store_url, view.artifact.key,
                                                                     view.artifact.sha256)
        return Response(data, media_type=view.artifact.content_type, headers={"ETag": etag})

    # -- inputs --------------------------------------------------------------------------------------
    @app.post("/v1/inputs", tags=["inputs"], summary="Upload an image (init, mask, control): its content id",
              responses=WRITES, openapi_extra=IMAGE_BODY)
    async def upload_input(request: Request, kind: UploadKind = "image",
                           p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        from farm.jobs.kinds import MAX_INPUT_BYTES

        handle = await spool(request, MAX_INPUT_BYTES)
        try:
            data = handle.read()  # at most MAX_INPUT_BYTES: checked as it arrived
        finally:
            handle.close()
        return await run_in_threadpool(_store_input, farm_api, p.tenant, data, kind == "mask")

    @app.post("/v1/datasets", tags=["inputs"], summary="Upload a dataset (a zip or tar of captioned images)",
              responses=WRITES, openapi_extra=ARCHIVE_BODY)
    async def upload_dataset(request: Request, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        handle = await spool(request, MAX_DATASET_BYTES)
        try:
            return await run_in_threadpool(_store_dataset, farm_api, p.tenant, handle)
        finally:
            handle.close()

    # -- training ----------------------------------------------------------------------------------------
    @app.post("/v1/distill", tags=["training"], summary="Distil an LCM-LoRA from a teacher (one training job)",
              responses=WRITES, openapi_extra=DISTILL_BODY)
    async def distill(request: Request, p: Principal = Depends(need("submit"))) -> dict[str, Any]:
        body = await read_json(request)
        missing = [k for k in ("teacher", "data", "name") if k not in body]
        if missing:
            raise InputError(missing[0], "required")
        teacher, data, name = (body.pop(k) for k in ("teacher", "data", "name"))
        if not all(isinstance(v, str) for v in (teacher, data, name)):
            raise InputError("teacher", "teacher, data and name are strings")
        known = {"steps", "rank", "skip", "guidance_range", "solver", "batch_size", "lr", "checkpoint_every",
                 "eval_samples", "full", "resolution", "gradient_checkpointing", "seed", "priority"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise InputError(unknown[0], "unknown field")
        planned = await run_in_threadpool(lambda: farm_api.plan_distill(teacher, data, name, policy=policy(p), **body))
        result = await run_in_threadpool(lambda: farm_api.submit_plan(planned, force=True, tenant=p.tenant))
        training = planned.specs[0].training or {}
        return {"batch": result.batch, "job": result.job_ids[0], "name": name,
                "examples": training.get("data", {}).get("examples"), "steps": planned.specs[0].steps,
                "seed": planned.specs[0].seed}

    # -- events, webhooks and the monitor (issue 25) -----------------------------------------------------
    from farm.service.events import event_routes

    event_routes(app, farm_api, need, owned_batch)
    from farm.service.webhook_routes import webhook_routes

    webhook_routes(app, farm_api, need)
    from farm.service.monitor import monitor_routes

    monitor_routes(app)

    # -- what the farm can load ------------------------------------------------------------------------
    for path, what in REGISTRIES.items():
        _registry_routes(app, farm_api, need, path, what)

    @app.get("/v1/recipes", tags=["registries"], summary="The few-step recipes", responses=READS)
    def recipes(p: Principal = Depends(need("read"))) -> list[dict]:
        from farm.models.recipes import RECIPES

        return [r.as_dict() for r in RECIPES.values()]

    # -- the fleet ---------------------------------------------------------------------------------------
    @app.get("/v1/workers", tags=["fleet"], summary="Workers, their state and resident models", responses=READS)
    def workers(p: Principal = Depends(need("read"))) -> list[dict]:
        now = datetime.now(timezone.utc)
        return [{"name": w.name, "device": w.device, "gpu": w.gpu_name,
                 "state": states.worker_shown_state(w.state, (now - w.last_heartbeat).total_seconds()),
                 "resident_models": w.resident_models, "models": w.models,
                 # what another tenant's job a worker holds is not a tenant's business
                 **({"host": w.host, "current_job": w.current_job, "last_error": w.last_error} if p.admin else {})}
                for w in farm_api.workers()]

    @app.get("/v1/stats", tags=["fleet"], summary="Images, throughput and stage percentiles (admin)",
             responses=READS)
    def stats(since: str = Query("1h", pattern=r"^[0-9]{1,5}[smhdw]$", description="30m, 1h, 7d, 2w"),
              by: Grouping | None = None,
              p: Principal = Depends(need("admin"))) -> dict[str, Any]:
        from farm.results.stats import parse_since, summarise

        start = parse_since(since, datetime.now(timezone.utc))
        if by == "tenant":  # what each tenant cost (issue 24)
            return {"since": start.isoformat(), "by": by, "groups": farm_api.tenant_costs(start)}
        return {"since": start.isoformat(), "by": by, "groups": summarise(farm_api.attempts(start), by)}

    # -- tenants: weights, quotas, usage (issue 24) ------------------------------------------------------
    @app.get("/v1/usage", tags=["tenants"], summary="The key's tenant: weight, quotas, usage today and what is left",
             responses=READS)
    def usage(p: Principal = Depends(need("read"))) -> dict[str, Any]:
        return farm_api.usage(p.tenant)

    @app.put("/v1/tenants/{tenant}", tags=["tenants"], summary="Set a tenant's weight and quotas (admin)",
             responses=WRITES, openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": TENANT_SETTINGS}}}})
    async def set_tenant(request: Request, tenant: str = Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", max_length=64),
                         p: Principal = Depends(need("admin"))) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict) or not body or set(body) - {"weight", "quotas"}:
            raise InputError("body", "expected an object with weight and/or quotas")
        weight = body.get("weight")
        quotas = body.get("quotas")
        if "weight" in body and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
            raise InputError("weight", "expected a number")
        if "quotas" in body and (not isinstance(quotas, dict) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in quotas.values())):
            raise InputError("quotas", "expected an object of numbers (null removes a quota)")
        return await run_in_threadpool(farm_api.set_tenant, tenant, weight=weight, quotas=quotas)

    return app


def _registry_routes(app: FastAPI, farm_api, need, path: str, what: str) -> None:
    attribute = {"model": "models", "adapter": "adapters", "embedding": "embeddings", "controlnet": "controlnets"}[what]

    def listing(p: Principal = Depends(need("read"))) -> list[dict]:
        return [e.as_dict() for e in getattr(farm_api.catalog(), attribute).values()]

    def remove(name: str = NAME, p: Principal = Depends(need("admin"))) -> dict[str, Any]:
        farm_api.unregister(what, name)
        return {"removed": name, "what": what}

    app.add_api_route(f"/v1/{path}", listing, methods=["GET"], tags=["registries"], responses=READS,
                      summary=f"Built-in and registered {path}", name=f"list_{path}")
    if what != "controlnet":  # a ControlNet is a directory: register it from the CLI
        async def add(request: Request, name: str = Query(..., pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
                      family: str = Query(..., max_length=32), kind: str | None = Query(None, max_length=32),
                      arch: str | None = Query(None, max_length=32), recipe: str | None = Query(None, max_length=64),
                      steps: int | None = Query(None, ge=1, le=200), token: str | None = Query(None, max_length=64),
                      p: Principal = Depends(need("admin"))) -> dict[str, Any]:
            handle = await spool(request, MAX_MODEL_BYTES)
            try:
                options = {"family": family, "kind": kind, "arch": arch, "recipe": recipe, "steps": steps,
                           "token": token}
                return await run_in_threadpool(_register_upload, farm_api, what, name, options, handle)
            finally:
                handle.close()

        app.add_api_route(f"/v1/{path}", add, methods=["POST"], tags=["registries"], responses=WRITES,
                          summary=f"Register a {what} from an uploaded .safetensors file (admin)", name=f"add_{what}",
                          openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                              "schema": {"type": "string", "format": "binary"}}}}})
    app.add_api_route(f"/v1/{path}/{{name}}", remove, methods=["DELETE"], tags=["registries"], responses=WRITES,
                      summary=f"Remove a registered {what} (admin)", name=f"remove_{what}")


def _register_upload(farm_api, what: str, name: str, options: dict, handle) -> dict:
    """Register an uploaded weight file: checked as `farm ... add` checks a local file (its header
    against the family and arch, its sha256), then kept in the farm's store, which workers fetch
    from, and registered with that store address as its source."""
    import shutil

    from farm.models import registry
    from farm.storage import object_uri, open_store

    with tempfile.TemporaryDirectory(prefix="farm-upload-") as tmp:
        path = FilePath(tmp) / f"{name}.safetensors"
        with open(path, "wb") as out:
            shutil.copyfileobj(handle, out, 1 << 20)
        family = options["family"]
        if what == "model":
            entry = registry.model_entry(name, source=str(path), family=family, kind=options["kind"] or "base",
                                         arch=options["arch"], cwd=FilePath(tmp))
        elif what == "adapter":
            entry = registry.adapter_entry(name, source=str(path), kind=options["kind"] or "style", family=family,
                                           recipe=options["recipe"], steps=options["steps"], cwd=FilePath(tmp))
        else:
            entry = registry.embedding_entry(name, source=str(path), family=family, token=options["token"],
                                             cwd=FilePath(tmp))
        checked = farm_api.check_entry(entry)  # header, family, arch, sha256: before anything is kept
        store = open_store(farm_api.config.store_url, s3_endpoint_url=farm_api.config.s3_endpoint_url)
        key = f"registry/{what}s/{checked.sha256}/{name}.safetensors"
        store.put_file(key, path, "application/octet-stream", metadata={"sha256": checked.sha256 or ""})
        from dataclasses import replace

        recorded = farm_api.register(replace(checked, source=object_uri(store, key)), checked=True)
    return recorded.as_dict()


def _store_dataset(farm_api, tenant: str, handle) -> dict:
    """A dataset from an uploaded archive: unpacked safely (no paths out of it, bounded), read and
    checked like a directory dataset, its images and manifest stored; ``dataset:<sha256>`` for
    ``POST /v1/distill``."""
    from farm.intake.archives import unpack
    from farm.intake.datasets import read_dataset
    from farm.storage import open_store
    from farm.tenancy.policy import OPERATOR

    with tempfile.TemporaryDirectory(prefix="farm-dataset-") as tmp:
        folder = unpack(handle, FilePath(tmp))
        dataset = read_dataset(str(folder), farm_api.input_reader(OPERATOR))  # our own temporary folder
    store = open_store(farm_api.config.store_url, s3_endpoint_url=farm_api.config.s3_endpoint_url)
    from farm.fleet.producer import store_inputs

    store_inputs(store, dataset.images)
    if not store.exists(dataset.key):
        store.put(dataset.key, dataset.manifest, "application/jsonl")
    farm_api.ledger.add_tenant_input(tenant, dataset.sha256)
    return {"dataset": f"dataset:{dataset.sha256}", "examples": len(dataset.examples),
            "captions": len(set(dataset.captions))}


def _store_input(farm_api, tenant: str, data: bytes, mask: bool) -> dict:
    """Check an uploaded image as a submission's would be (decoded, bounded, made canonical), store
    it by content and record that this tenant uploaded it."""
    from farm.fleet.producer import store_inputs
    from farm.intake.images import check_upload
    from farm.storage import open_store

    checked = check_upload("input", data, mask=mask)
    store = open_store(farm_api.config.store_url, s3_endpoint_url=farm_api.config.s3_endpoint_url)
    store_inputs(store, {checked.sha256: checked.data})
    farm_api.ledger.add_tenant_input(tenant, checked.sha256)
    return {"input": f"input:{checked.sha256}", "sha256": checked.sha256, "width": checked.width,
            "height": checked.height, "bytes": len(checked.data),
            "uploaded_sha256": hashlib.sha256(data).hexdigest()}


class _Sink:
    """A write-only file for ZipFile that hands over what was written so far (a streamed zip)."""

    def __init__(self):
        self.buffer = bytearray()
        self.position = 0

    def write(self, data) -> int:
        self.buffer += data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.buffer = bytes(self.buffer), bytearray()
        return out
