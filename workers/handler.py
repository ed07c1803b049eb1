"""Handling one message: claim the jobs, render them, store the images, record the outcome.

The claim is a conditional ledger update, so a duplicate delivery renders nothing twice. Images
are encoded and uploaded on a small thread pool (PNG encoding releases the GIL), and each job's
completion is a compare-and-set on its attempt's fencing token.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from farm.errors import FarmError, InputError
from farm.ledger import ClaimedJob, Ledger
from farm.metadata import a1111_parameters, job_record_json
from farm.spec import group_key
from farm.storage import Store, artifact_key
from workers.imaging import encode_png

log = logging.getLogger("farm.worker")


def job_record(job, *, worker: str, device: str, versions: dict) -> dict:
    """Everything needed to understand and reproduce one image (goes into its PNG)."""
    return {
        "id": job.id, "batch": job.batch_id, "index": job.index, "prompt": job.prompt,
        "negative_prompt": job.negative_prompt, "seed": job.seed, "steps": job.steps,
        "guidance": job.guidance, "width": job.width, "height": job.height, "model": job.model,
        "model_revision": job.model_revision, "family": job.family, "recipe": job.recipe,
        "scheduler": job.scheduler, "scheduler_config": job.scheduler_config,
        "adapters": job.adapters, "digest": job.digest, "worker": worker, "device": device,
        "versions": versions,
    }


def _ms_between(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else max(0.0, (later - earlier).total_seconds() * 1000)


class Handler:
    def __init__(self, *, ledger: Ledger, store: Store, runner, worker: str, device: str,
                 versions: dict, lease_s: float, io_threads: int = 2):
        self.ledger = ledger
        self.store = store
        self.runner = runner
        self.worker = worker
        self.device = device
        self.versions = versions
        self.lease_s = lease_s
        self.pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="farm-io")

    def handle(self, job_ids: list[int]) -> dict:
        """Render the jobs of one message; returns counts of what happened to them."""
        summary = {"claimed": 0, "succeeded": 0, "failed": 0, "skipped": 0}
        claims = {c.job_id: c for c in self.ledger.claim(job_ids, worker=self.worker, device=self.device,
                                                         lease_s=self.lease_s)}
        summary["claimed"] = len(claims)
        summary["skipped"] = len(job_ids) - len(claims)
        if not claims:
            return summary
        jobs = self.ledger.load_jobs(claims)
        groups: dict[tuple, list] = {}
        for job in jobs:  # a message holds one group; split defensively if it does not
            groups.setdefault(group_key(job), []).append(job)
        for group in groups.values():
            ok, failed = self._render_group(group, claims)
            summary["succeeded"] += ok
            summary["failed"] += failed
        self.ledger.heartbeat(self.worker, resident_models=self.runner.resident_models(),
                              resident_adapters=self.runner.resident_adapters(),
                              rendered=summary["succeeded"], current_job=None)
        return summary

    def _stop_check(self, tokens: list[str], interval: float = 0.5):
        """Polls the ledger at most every ``interval`` s: is any of these jobs still ours to render?"""
        last = {"at": time.monotonic(), "running": True}

        def should_stop() -> bool:
            now = time.monotonic()
            if now - last["at"] >= interval:
                last["at"], last["running"] = now, self.ledger.still_running(tokens)
            return not last["running"]

        return should_stop

    def _render_group(self, jobs: list, claims: dict[int, ClaimedJob]) -> tuple[int, int]:
        from workers.runner import Interrupted

        started = time.perf_counter()
        self.ledger.heartbeat(self.worker, current_job=jobs[0].id)
        tokens = [claims[j.id].token for j in jobs]
        try:
            rendered = self.runner.render(jobs, should_stop=self._stop_check(tokens))
        except Interrupted as exc:
            self.ledger.close_attempts(tokens, outcome="cancelled", error=str(exc))
            return 0, 0
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the jobs
            if isinstance(exc, FarmError):
                error = str(exc)
            else:
                error = f"{type(exc).__name__}: {exc}"
                log.error("render failed for jobs %s\n%s", [j.id for j in jobs], traceback.format_exc())
            for job in jobs:
                self.ledger.fail(job.id, claims[job.id].token, error=error)
            self.ledger.heartbeat(self.worker, error=error)
            return 0, len(jobs)
        shared_ms = (time.perf_counter() - started) * 1000
        n = len(jobs)
        per_image = {k: v / n for k, v in rendered.timings.items()}  # shared stages, amortised
        futures = [
            self.pool.submit(self._store_one, job, pixels, claims[job.id], per_image, shared_ms / n,
                             rendered.batch_size, rendered.scheduler, rendered.environment or {})
            for job, pixels in zip(jobs, rendered.pixels)
        ]
        results = [f.result() for f in futures]
        ok = sum(results)
        return ok, n - ok

    def _store_one(self, job, pixels, claim: ClaimedJob, timings: dict, render_ms: float,
                   batch_size: int, scheduler: str, environment: dict) -> bool:
        try:
            record = job_record(job, worker=self.worker, device=self.device, versions=self.versions)
            record["scheduler"] = record["scheduler"] or scheduler  # "model default" made concrete
            environment = {**environment, "versions": self.versions, "device_name": self.device}
            record["environment"] = environment
            started = time.perf_counter()
            png = encode_png(pixels, a1111_parameters(record), job_record_json(record))
            encoded = time.perf_counter()
            key = artifact_key(job.batch_id, job.index, job.seed)
            digest = hashlib.sha256(png).hexdigest()
            self.store.put(key, png, "image/png", metadata={"sha256": digest, "seed": str(job.seed)})
            uploaded = time.perf_counter()
            timings = dict(timings)
            timings["image_encode_ms"] = (encoded - started) * 1000
            timings["upload_ms"] = (uploaded - encoded) * 1000
            timings["queue_wait_ms"] = _ms_between(claim.started_at, job.queued_at)
            timings["total_ms"] = render_ms + (uploaded - started) * 1000
            artifact = {"store_url": self.store.url, "key": key, "sha256": digest, "bytes": len(png),
                        "width": job.width, "height": job.height, "content_type": "image/png"}
            return self.ledger.complete(job.id, claim.token, artifact=artifact, timings=timings,
                                        batch_size=batch_size, environment=environment)
        except Exception as exc:  # noqa: BLE001
            error = str(exc) if isinstance(exc, (FarmError, InputError)) else f"{type(exc).__name__}: {exc}"
            log.error("storing job %s failed: %s", job.id, error)
            self.ledger.fail(job.id, claim.token, error=error)
            return False

    def close(self) -> None:
        self.pool.shutdown(wait=True)
