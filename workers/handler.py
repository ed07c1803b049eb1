"""Handling one message: claim the jobs, render them, store the images, record the outcome.

- The claim is a conditional ledger update with a fencing token and a lease, so a duplicate
  delivery renders nothing twice; the lease is renewed while the micro-batch renders.
- Completion is a compare-and-set on the token: a superseded attempt changes nothing.
- Failures are classified: bad input fails the job at once; anything else (store, network, device,
  time limit) is retried with exponential backoff until the job has used up its attempts; running
  out of memory splits the micro-batch first.
- Images are encoded and uploaded on a small thread pool (PNG encoding releases the GIL) while
  the next micro-batch renders: the message is acked once its images are rendered, their claims
  stay leased until each image is stored and recorded, and at most one micro-batch is stored in
  the background at a time (the next waits for it before handing over its own).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from engine.imaging import encode_png
from farm.fleet import retry
from farm.jobs import states
from farm.jobs.clips import artifact_extension, content_type
from farm.jobs.spec import JobSpec
from farm.ledger import Artifact, Claim, Completion, Ledger
from farm.results.metadata import a1111_parameters, job_record, job_record_json, resource_hashes
from farm.storage import Store, artifact_key

log = logging.getLogger("farm.worker")
QUARANTINE_AFTER = 3  # consecutive failed micro-batches of one model
STORE_HANG_S = 600.0  # a micro-batch's images not stored after this long: a hung upload or disk


def _ms_between(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else max(0.0, (later - earlier).total_seconds() * 1000)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc)


def time_limit_s(spec: JobSpec, rows: int, base_s: float) -> float:
    """A micro-batch's time limit: ``base_s`` for one 512x512 image at 4 steps, scaled by steps,
    pixels and rows (never under 30 s: loading a model is part of the first call)."""
    frames = spec.clip["frames"] if spec.clip else 1  # issue 27: a clip is its frames' work
    scale = (spec.steps / 4) * (spec.width * spec.height / (512 * 512)) * rows * frames
    return max(30.0, base_s * scale)


class Handler:
    def __init__(self, *, ledger: Ledger, store: Store, runner, worker: str, device: str, versions: dict,
                 lease_s: float, time_limit_s: float = 900, max_attempts: int = 3, retry_backoff_s: float = 5,
                 publisher=None, micro_batch: int = 8, draining: threading.Event | None = None,
                 on_quarantine=None, metrics=None, io_threads: int = 2, store_overlap: bool = True,
                 check_s: float = 2.0):
        self.ledger = ledger
        self.store = store
        self.runner = runner
        self.worker = worker
        self.device = device
        self.versions = versions
        self.lease_s = lease_s
        # how often the lease keeper asks the ledger which held jobs are still ours: the longest a
        # cancelled render goes on (never less often than the leases need renewing)
        self.check_s = min(check_s, max(0.5, lease_s / 3))
        self.lost: frozenset[str] = frozenset()  # held tokens whose jobs the keeper found taken away
        self.base_time_limit = time_limit_s
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.publisher = publisher  # republishes drained jobs at once (else maintenance does)
        self.micro_batch = micro_batch
        self.draining = draining or threading.Event()
        # while draining, the monotonic time from which the current micro-batch is handed back
        # rather than finished (0: at once; a stop signal's grace moves it later: ``finish_by``)
        self.hand_back_at = 0.0
        self.on_quarantine = on_quarantine
        self.metrics = metrics  # WorkerMetrics, when FARM_METRICS_PORT is set
        self.model_failures: dict[str, int] = {}
        self.current: dict[int, Claim] = {}  # what this worker renders right now
        self.storing: dict[int, Claim] = {}  # rendered, being encoded, uploaded and recorded
        self.store_overlap = store_overlap  # False: a message returns only once its images are stored
        self._stores: list = []  # futures of the micro-batch being stored in the background
        self._lock = threading.Lock()
        self.last_activity = time.monotonic()  # the last message this worker took or finished
        self.rendered_unreported = 0
        self.busy_ms = 0.0  # time in pipeline calls that rendered (reported with heartbeats)
        self.hang_deadline: float | None = None  # monotonic time past which a render counts as hung
        self.store_deadline: float | None = None  # ... and past which the images being stored do
        self.pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="farm-io")
        self._closed = threading.Event()
        threading.Thread(target=self._keep, name="farm-leases", daemon=True).start()

    # -- the message ----------------------------------------------------------------------------
    def handle(self, job_ids: list[int]) -> dict:
        """Render the jobs of one message; returns counts of what happened to them."""
        summary = {"claimed": 0, "succeeded": 0, "failed": 0, "retried": 0, "skipped": 0, "storing": 0}
        self.last_activity = time.monotonic()
        if self.draining.is_set():
            summary["skipped"] = len(job_ids)  # acked unclaimed: the ledger keeps them queued
            return summary
        claims = {c.job_id: c for c in self.ledger.claim(job_ids, worker=self.worker, device=self.device,
                                                         lease_s=self.lease_s)}
        summary["claimed"] = len(claims)
        summary["skipped"] = len(job_ids) - len(claims)
        if not claims:
            return summary
        self.current = dict(claims)
        try:
            groups: dict[tuple, list[Claim]] = {}
            for claim in claims.values():  # a message holds one group; split defensively if it does not
                if claim.spec.training is not None:  # issue 14: a training job holds the worker to its end
                    from workers import training

                    for outcome, count in training.run(self, claim).items():
                        summary[outcome] += count
                    continue
                groups.setdefault(claim.spec.group_key, []).append(claim)
            for group in groups.values():
                for outcome, count in self._render_group(group).items():
                    summary[outcome] += count
        finally:
            self.current = {}
            self.last_activity = time.monotonic()
        with self._lock:
            self.rendered_unreported += summary["succeeded"]
        if self.metrics:
            self.metrics.observe({k: summary[k] for k in ("succeeded", "failed", "retried", "skipped")}, None, None)
        return summary

    def report_status(self) -> None:
        """Write what this worker holds and has rendered to the ledger. Called from the heartbeat
        thread, not per message: at zero backlog two extra commits per job were a third of the
        farm's overhead."""
        with self._lock:
            rendered, self.rendered_unreported = self.rendered_unreported, 0
            busy_ms = self.busy_ms
        current = next(iter(self.current), None)
        models, adapters = self.runner.resident_models(), self.runner.resident_adapters()
        self.ledger.heartbeat(self.worker, resident_models=models, resident_adapters=adapters, rendered=rendered,
                              current_job=current, busy_ms=busy_ms)
        if self.metrics:
            self.metrics.resident(len(models), len(adapters))

    def _keep(self) -> None:
        """One thread for the worker's life, every ``check_s`` seconds while it holds jobs: find
        out which of them are still its own (a cancel takes them away), renewing their leases in
        the same statement every lease/3 seconds; and end the process if a render hangs where no
        step callback runs (a hung kernel, a wedged load): the supervisor restarts it and the
        reaper hands the jobs on. The render's step callback only reads what this thread found,
        so a render costs the ledger one statement per ``check_s``, not one per step."""
        renew_every = max(0.5, self.lease_s / 3)
        renewed = time.monotonic()
        while not self._closed.wait(self.check_s):
            deadline = self.hang_deadline
            if deadline is not None and time.monotonic() > deadline:
                log.error("a render hung past twice its time limit; exiting to be restarted")
                os._exit(70)
            deadline = self.store_deadline
            if deadline is not None and self.storing and time.monotonic() > deadline:
                # the leases renewed here would otherwise keep the jobs from the reaper for good
                log.error("storing images hung for %ss; exiting to be restarted", STORE_HANG_S)
                os._exit(70)
            held = {c.token for c in list(self.current.values()) + list(self.storing.values())}
            if not held:
                continue
            try:
                if time.monotonic() - renewed >= renew_every - self.check_s / 2:
                    owned = self.ledger.renew_leases(held, self.lease_s)
                    renewed = time.monotonic()
                else:
                    owned = self.ledger.running_tokens(held)
                self.lost = frozenset(held - owned)
            except Exception as exc:  # noqa: BLE001 - if it keeps failing, the reaper hands the jobs on
                log.warning("lease renewal failed: %s", exc)

    # -- rendering ------------------------------------------------------------------------------
    def finish_by(self, grace_s: float) -> None:
        """Drain: take no new job, and let the current micro-batch finish if it can within
        ``grace_s`` seconds (handed back at its next step after that)."""
        self.hand_back_at = time.monotonic() + grace_s
        self.draining.set()

    def _stop_check(self, tokens: list[str], deadline: float):
        """A reason to stop at the next step: the worker drains (past its grace), the time limit
        passed, or none of the jobs is ours any more (cancelled; the lease keeper finds out, every
        ``check_s``)."""
        mine = frozenset(tokens)

        def should_stop() -> str | None:
            if self.draining.is_set() and time.monotonic() >= self.hand_back_at:
                return "draining"
            if time.monotonic() > deadline:
                return "timeout"
            return "cancelled" if mine <= self.lost else None

        return should_stop

    def _render_group(self, group: list[Claim]) -> dict:
        from engine.runner import Interrupted

        counts = {"succeeded": 0, "failed": 0, "retried": 0, "storing": 0}
        started = time.perf_counter()
        tokens = [c.token for c in group]
        specs = [c.spec for c in group]
        limit = time_limit_s(specs[0], len(group), self.base_time_limit)
        self.hang_deadline = time.monotonic() + limit * 2 + 60  # watched by the keeper thread
        try:
            rendered = self.runner.render(specs, should_stop=self._stop_check(tokens, time.monotonic() + limit))
        except Interrupted as exc:
            return self._interrupted(group, exc, counts)
        except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded on the jobs
            if is_out_of_memory(exc) and len(group) > 1:
                log.warning("out of memory with %d images; splitting the micro-batch", len(group))
                half = len(group) // 2
                for part in (group[:half], group[half:]):
                    for outcome, count in self._render_group(part).items():
                        counts[outcome] += count
                return counts
            return self._failed(group, exc, counts)
        finally:
            self.hang_deadline = None
        self.model_failures.pop(specs[0].model, None)
        if self.metrics:
            self.metrics.observe({}, None, rendered.batch_size)
        shared_ms = (time.perf_counter() - started) * 1000
        n = len(group)
        with self._lock:  # the worker's own count of its busy time, against which tenants' GPU
            self.busy_ms += shared_ms  # time is checked (issue 24); each job is charged shared_ms / n
        # shared stages amortised over the images; a peak (memory) is the call's, not divided
        per_image = {k: v / n if k.endswith("_ms") else v for k, v in rendered.timings.items()}
        self.wait_for_stores()  # the previous micro-batch's images: one batch of pixels in flight
        for claim in group:
            self.storing[claim.job_id] = claim
        self.store_deadline = time.monotonic() + STORE_HANG_S
        uploads = [
            self.pool.submit(self._upload_one, claim, pixels, per_image, shared_ms / n,
                             rendered.batch_size, rendered.scheduler, rendered.environment or {})
            for claim, pixels in zip(group, rendered.pixels)
        ]
        # the images encode and upload in parallel; the micro-batch is recorded in one transaction
        self._stores = [self._record_when_uploaded(group, uploads)]
        if self.store_overlap:
            counts["storing"] = len(group)  # counted as they finish, in the background
        else:
            for outcome in self._stores[0].result():
                counts[outcome] += 1
        return counts

    def _record_when_uploaded(self, group: list[Claim], uploads: list) -> Future:
        """A future of the micro-batch's outcomes: recorded by whichever thread finishes its last
        upload (a thread of its own waiting on them cost a wake-up per micro-batch, a tenth of a
        job's overhead at zero backlog: issue 15)."""
        recorded: Future = Future()
        remaining = [len(uploads)]
        lock = threading.Lock()

        def uploaded(_future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            try:
                recorded.set_result(self._record(group, uploads))
            except BaseException as exc:  # noqa: BLE001 - whoever waits for the stores sees it
                recorded.set_exception(exc)

        for upload in uploads:
            upload.add_done_callback(uploaded)
        return recorded

    def wait_for_stores(self) -> None:
        """Block until the images handed to the store pool are stored and recorded."""
        stores, self._stores = self._stores, []
        for future in stores:
            future.result()

    def _record(self, group: list[Claim], uploads: list) -> list[str]:
        """Wait for a micro-batch's uploads, then complete every stored image in one ledger
        transaction (a failed upload has been retried or failed on its own already)."""
        outcomes: dict[int, str] = {}
        stored: list[tuple[Claim, Completion]] = []
        for claim, future in zip(group, uploads):
            result = future.result()
            if isinstance(result, Completion):
                stored.append((claim, result))
            else:
                outcomes[claim.job_id] = result
        try:
            done = self.ledger.complete_many([c for _, c in stored])
            for (claim, completion), ok in zip(stored, done):
                outcomes[claim.job_id] = "succeeded" if ok else "skipped"
                if ok and self.metrics:
                    self.metrics.observe({}, completion.timings, None)
        except Exception as exc:  # noqa: BLE001 - a ledger fault: each job is retried
            error = retry.describe(exc)
            log.error("recording failed: %s", error, extra={"jobs": [c.job_id for c, _ in stored]})
            for claim, _ in stored:
                outcomes[claim.job_id] = self._retry_or_fail(claim, error)
        finally:
            for claim in group:
                self.storing.pop(claim.job_id, None)
        self._ring(group)
        ordered = [outcomes[claim.job_id] for claim in group]
        if self.store_overlap:
            with self._lock:
                self.rendered_unreported += ordered.count("succeeded")
            if self.metrics:
                for outcome in ordered:
                    self.metrics.observe({outcome: 1}, None, None)
        return ordered

    def _interrupted(self, group: list[Claim], exc, counts: dict) -> dict:
        if exc.reason == "cancelled":
            self.ledger.close_attempts([c.token for c in group], outcome=states.ATTEMPT_CANCELLED, error=str(exc))
            return counts
        if exc.reason == "draining":  # not the job's fault: back to the queue, no attempt used up
            requeued = [c.job_id for c in group if self.ledger.requeue(c.job_id, c.token, error=str(exc),
                                                                       outcome=states.ATTEMPT_DRAINED)]
            self._publish_now(requeued)
            counts["retried"] += len(requeued)
            return counts
        return self._failed(group, TimeoutError(f"time limit: {exc}"), counts, outcome=states.ATTEMPT_TIMEOUT)

    def _failed(self, group: list[Claim], exc, counts: dict, outcome: str = states.ATTEMPT_RETRY) -> dict:
        error = retry.describe(exc)
        if retry.is_permanent(exc):  # bad input: retrying cannot help
            for claim in group:
                self._settle(claim, retry.decide(failures_before=0, max_attempts=self.max_attempts,
                                                 backoff_s=self.retry_backoff_s, error=error, permanent=True))
            counts["failed"] += len(group)
            self.ledger.heartbeat(self.worker, error=error)
            self._ring(group)
            return counts
        log.error("render failed: %s\n%s", error, traceback.format_exc(),
                  extra={"jobs": [c.job_id for c in group], "batch": group[0].batch_id})
        for claim in group:
            counts[self._retry_or_fail(claim, error, outcome)] += 1
        self.ledger.heartbeat(self.worker, error=error)
        self._ring(group)
        model = group[0].spec.model
        self.model_failures[model] = self.model_failures.get(model, 0) + 1
        # kept away from the model only where another worker can take it over
        if self.model_failures[model] >= QUARANTINE_AFTER and self.on_quarantine and self.ledger.active_workers() > 1:
            self.model_failures.pop(model)
            self.on_quarantine(model)
        return counts

    def _ring(self, group: list[Claim]) -> None:
        """Wake the clients waiting on these jobs' batches (farm.fleet.doorbell): best-effort, the
        ledger already holds the outcome."""
        if self.publisher is not None and hasattr(self.publisher, "ring"):
            self.publisher.ring(c.batch_id for c in group)

    def _retry_or_fail(self, claim: Claim, error: str, outcome: str = states.ATTEMPT_RETRY) -> str:
        """Back to the queue after an exponential backoff, or failed once attempts are used up
        (farm.fleet.retry decides). Every attempt keeps its own error."""
        decision = retry.decide(failures_before=self.ledger.failures(claim.job_id), max_attempts=self.max_attempts,
                                backoff_s=self.retry_backoff_s, error=error, outcome=outcome)
        return self._settle(claim, decision)

    def _settle(self, claim: Claim, decision: retry.Decision) -> str:
        if decision.action == retry.FAIL:
            self.ledger.fail_attempt(claim.job_id, claim.token, error=decision.error, outcome=decision.outcome)
            return "failed"
        self.ledger.requeue(claim.job_id, claim.token, error=decision.error, outcome=decision.outcome,
                            delay_s=decision.delay_s)
        return "retried"

    def _publish_now(self, job_ids: list[int]) -> None:
        if not job_ids or self.publisher is None:
            return
        from farm.fleet.producer import republish

        try:
            republish(self.ledger, self.publisher, job_ids, micro_batch=self.micro_batch)
        except Exception as exc:  # noqa: BLE001 - the reconciler publishes them later
            log.warning("could not republish %s now: %s", job_ids, exc)

    def requeue_current(self, reason: str) -> None:
        """Hand back whatever this worker is rendering or storing (a second stop signal: leave at
        once; a store that finishes first wins the compare-and-set and the requeue does nothing)."""
        claims = {**self.storing, **self.current}
        requeued = [job_id for job_id, c in claims.items()
                    if self.ledger.requeue(job_id, c.token, error=reason, outcome=states.ATTEMPT_DRAINED)]
        self._publish_now(requeued)

    # -- storing --------------------------------------------------------------------------------
    def _upload_one(self, claim: Claim, pixels, timings: dict, render_ms: float,
                    batch_size: int, scheduler: str, environment: dict) -> Completion | str:
        """Encode and upload one image; what to record for it, or (after a failure that was
        retried or failed) its outcome."""
        spec = claim.spec
        try:
            environment = {**environment, "versions": self.versions, "device_name": self.device}
            # issue 12: the files' sha256s from the registry (the runner's catalog), for the PNG's
            # Model hash / Lora hashes / TI hashes; nothing is hashed here
            hashes = resource_hashes(spec, getattr(self.runner, "catalog", None))
            record = job_record(spec, job_id=claim.job_id, batch=claim.batch_id, index=claim.index,
                                worker=self.worker, device=self.device, versions=self.versions,
                                scheduler=scheduler, environment=environment, hashes=hashes)
            started = time.perf_counter()
            if spec.clip:  # issue 27: the clip's frames as one file (engine.clips), an animated WebP or an MP4
                from engine.clips import encode_clip

                png = encode_clip(pixels, spec.clip["fps"], spec.clip["format"], a1111_parameters(record),
                                  job_record_json(record))
            else:
                png = encode_png(pixels, a1111_parameters(record), job_record_json(record))
            encoded = time.perf_counter()
            key = artifact_key(claim.batch_id, claim.index, spec.seed, artifact_extension(spec.clip))
            digest = hashlib.sha256(png).hexdigest()
            self.store.put(key, png, content_type(spec.clip), metadata={"sha256": digest, "seed": str(spec.seed)})
            uploaded = time.perf_counter()
            timings = dict(timings)
            timings["image_encode_ms"] = (encoded - started) * 1000
            timings["upload_ms"] = (uploaded - encoded) * 1000
            timings["queue_wait_ms"] = _ms_between(claim.started_at, claim.queued_at)
            timings["total_ms"] = render_ms + (uploaded - started) * 1000
            timings["gpu_ms"] = render_ms  # its share of the pipeline call: what its tenant is charged
            artifact = Artifact(store_url=self.store.url, key=key, sha256=digest, bytes=len(png),
                                width=spec.width, height=spec.height, content_type=content_type(spec.clip))
            return Completion(claim.job_id, claim.token, artifact, timings, batch_size, environment)
        except Exception as exc:  # noqa: BLE001 - a store fault: retry the job
            error = retry.describe(exc)
            log.error("storing failed: %s", error, extra={"job": claim.job_id, "batch": claim.batch_id})
            return self._retry_or_fail(claim, error)

    def close(self) -> None:
        self._closed.set()
        self.pool.shutdown(wait=True)
