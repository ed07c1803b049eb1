"""Running a training job (issue 14) on the worker that claimed it: one job, the whole worker.

The job's dataset comes from the store (a manifest of input images and captions, farm.jobs.datasets);
the teacher is loaded fresh (``Runner.training_pipeline``); ``engine.training.distill`` trains. Along the
way, every write is fenced by the attempt's token (farm.ledger.training):

- progress (step, loss, steps/s, ETA) goes to the ledger about once a second;
- every ``checkpoint_every`` steps the training state (trainable weights, optimizer, step, RNG)
  goes to the store under a key that carries the token, then the ledger points the job at it; a
  superseded attempt's pointer update changes nothing, and it stops;
- a cancel, a drain or a superseded attempt stops at the next step; the last checkpoint stays, and
  the next attempt (after a drain, a lost worker, a retry) resumes from it, not from step 0.

At the end the job evaluates the result against its teacher (engine.training.evaluation), stores the weights
and, in the one transaction that completes the job, records the evaluation and registers the
result as an ``lcm-lora`` accelerator of the teacher's arch (or a model of kind ``lcm``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Collection

from engine.training.settings import DataError
from farm.errors import ConflictError, InputError
from farm.jobs import states
from farm.jobs.datasets import manifest_key, verified_manifest
from farm.jobs.training import RESULT_FILE, checkpoint_key, result_key
from farm.ledger import Artifact, Claim, Completion
from farm.models.catalog import AdapterEntry, ModelEntry
from farm.models.weights import addnet_sha256_of
from farm.storage import object_uri
from farm.storage.fetch import manifest_digest

log = logging.getLogger("farm.worker")
PROGRESS_EVERY_S = 1.0
STEP_HANG_S = 900.0  # one training step (or one evaluation render) not done after this long: a hung worker
MAX_RECORDED_CAPTIONS = 64  # the distinct training captions the evaluation record lists


class Superseded(Exception):
    """The attempt no longer owns its job: another attempt took over, or it was cancelled."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class StoredExamples:
    """A dataset's examples as ``engine.training.data.Examples``, read from the store as training
    reaches them (through the worker's input cache on disk, verified by sha256): memory holds the
    manifest's rows, not the images. ``held_out``: captions left out of training."""

    def __init__(self, runner, rows: list[tuple[str, str]], held_out: Collection[str] = ()):
        self.runner = runner
        leave_out = set(held_out)
        self.rows = [(sha, caption) for sha, caption in rows if caption not in leave_out]

    def __len__(self) -> int:
        return len(self.rows)

    def caption(self, index: int) -> str:
        return self.rows[index][1]

    def image(self, index: int):
        import numpy as np

        return np.asarray(self.runner.inputs.image(self.rows[index][0]).convert("RGB"))

    def captions(self) -> list[str]:
        return list(dict.fromkeys(caption for _, caption in self.rows))


def manifest_rows(store, manifest_sha256: str) -> list[tuple[str, str]]:
    """The dataset's (image sha256, caption) rows, the manifest verified by its sha256."""
    return verified_manifest(manifest_sha256, store.get(manifest_key(manifest_sha256)))


def load_examples(runner, store, manifest_sha256: str, held_out: Collection[str] = ()) -> StoredExamples:
    """The dataset's examples, minus those whose caption is held out for the evaluation."""
    return StoredExamples(runner, manifest_rows(store, manifest_sha256), held_out)


def run(handler, claim: Claim) -> dict:
    """Train ``claim``'s job to the end (or to a stop); counts like a render's."""
    from engine.runner import Interrupted

    counts = {"succeeded": 0, "failed": 0, "retried": 0, "storing": 0, "skipped": 0}
    ledger = handler.ledger
    spec = claim.spec
    resume = ledger.start_training(claim.job_id, claim.token, spec.steps)
    if resume is None:  # not ours any more (cancelled, or another attempt has it)
        ledger.close_attempts([claim.token], outcome=states.ATTEMPT_SUPERSEDED)
        counts["skipped"] += 1
        return counts
    try:
        handler.hang_deadline = time.monotonic() + STEP_HANG_S + 600  # loading the teacher and the data
        outcome = _train(handler, claim, resume)
    except Interrupted as exc:
        return handler._interrupted([claim], exc, counts)
    except Superseded as exc:
        # a cancel that landed between two checks (at a progress report or a checkpoint) reads as
        # one: the attempt ended because its job was cancelled, not because another took over
        [view] = ledger.list_jobs(job_id=claim.job_id) or [None]
        if view is not None and view.state == states.CANCELLED:
            where = f" at step {exc.step}" if exc.step is not None else ""
            ledger.close_attempts([claim.token], outcome=states.ATTEMPT_CANCELLED, error=f"cancelled{where}")
        else:
            ledger.close_attempts([claim.token], outcome=states.ATTEMPT_SUPERSEDED, error=str(exc))
        counts["skipped"] += 1
        return counts
    except DataError as exc:  # the data or a setting cannot be used: bad input, not the model's fault
        return handler._failed([claim], InputError("data", str(exc)), counts)
    except ConflictError as exc:  # the name was registered while it trained: nothing to retry
        ledger.fail_attempt(claim.job_id, claim.token, error=str(exc), outcome=states.ATTEMPT_FAILED)
        counts["failed"] += 1
        return counts
    except Exception as exc:  # noqa: BLE001 - classified like a render's failure
        return handler._failed([claim], exc, counts)
    finally:
        handler.hang_deadline = None
    counts[outcome] += 1
    return counts


def _train(handler, claim: Claim, resume) -> str:
    from engine.training.distill import DistillSettings, distill
    from engine.training.evaluation import evaluate

    ledger, store, runner = handler.ledger, handler.store, handler.runner
    spec, job_id, token = claim.spec, claim.job_id, claim.token
    training = spec.training or {}
    started = time.perf_counter()
    prompts = list(training["eval_prompts"])
    held_out = set(prompts) if training.get("eval_held_out") else set()
    examples = load_examples(runner, store, training["data"]["manifest"], held_out)
    if not len(examples):
        raise DataError("every example's caption is held out for the evaluation")
    state = store.get(resume.key) if resume.key else None
    if state is not None:
        log.info("job %s resumes at step %s from %s", job_id, resume.step, resume.key)
    pipe = runner.training_pipeline(spec.model)
    lo, hi = training["guidance_range"]
    settings = DistillSettings(
        steps=spec.steps, rank=training["rank"], skip=training["skip"], guidance_min=lo, guidance_max=hi,
        solver=training["solver"], batch_size=training["batch_size"], lr=training["lr"],
        full=training["output"] == "model", seed=spec.seed, checkpoint_every=training["checkpoint_every"],
        resolution=training.get("resolution"), gradient_checkpointing=bool(training.get("gradient_checkpointing")))
    reported = {"at": 0.0}
    stop = handler._stop_check([token], float("inf"))

    def on_progress(step: int, loss: float, steps_per_s: float) -> None:
        handler.hang_deadline = time.monotonic() + STEP_HANG_S
        now = time.monotonic()
        if now - reported["at"] < PROGRESS_EVERY_S and step < spec.steps:
            return
        reported["at"] = now
        eta = (spec.steps - step) / steps_per_s if steps_per_s > 0 else None
        if not ledger.report_progress(job_id, token, step=step, loss=float(loss), steps_per_s=float(steps_per_s),
                                      eta_s=eta):
            raise Superseded(f"superseded at step {step}", step)

    def on_checkpoint(step: int, blob: bytes) -> None:
        key = checkpoint_key(job_id, step, token)
        store.put(key, blob, "application/octet-stream", metadata={"sha256": hashlib.sha256(blob).hexdigest()})
        if not ledger.record_checkpoint(job_id, token, key=key, step=step):
            raise Superseded(f"superseded at step {step}; checkpoint {key} not recorded", step)

    result = distill(pipe, spec.family, examples, settings, resume=state, on_progress=on_progress,
                     on_checkpoint=on_checkpoint, should_stop=stop)
    trained_ms = (time.perf_counter() - started) * 1000
    handler.hang_deadline = time.monotonic() + STEP_HANG_S
    started = time.perf_counter()
    student = (result.unet_config or {}, result.weights) if settings.full else None  # a full model's UNet

    def on_evaluation(done: int, total: int) -> None:  # each pipeline call: alive, not hung
        handler.hang_deadline = time.monotonic() + STEP_HANG_S

    evaluation = evaluate(pipe, spec.family, None if settings.full else result.weights, prompts,
                          samples=training["eval_samples"], seed=spec.seed,
                          original_inference_steps=result.original_inference_steps, student=student,
                          on_progress=on_evaluation)
    evaluation = json.loads(json.dumps(evaluation))  # plain JSON for the ledger
    trained = examples.captions()
    # held out only when it is true of what was trained: no evaluation prompt among its captions
    evaluation["prompts_held_out"] = bool(training.get("eval_held_out")) and not set(prompts) & set(trained)
    evaluation["trained_examples"] = len(examples)
    evaluation["trained_captions"] = trained[:MAX_RECORDED_CAPTIONS]
    evaluation["trained_captions_total"] = len(trained)
    evaluated_ms = (time.perf_counter() - started) * 1000
    if stop():
        raise Superseded("the job was cancelled during the evaluation")

    key = result_key(spec)
    digest = hashlib.sha256(result.weights).hexdigest()
    teacher = runner.model_entry(spec.model)
    entry: AdapterEntry | ModelEntry
    if settings.full:  # a model directory of kind lcm: the teacher's pipeline with the student UNet
        from engine.exporting import lcm_model_files

        folder = key.rsplit("/", 2)[0]  # models/<name>
        files = lcm_model_files(pipe, result.unet_config or {}, result.weights, result.original_inference_steps)
        digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
        for rel, data in sorted(files.items()):
            store.put(f"{folder}/{rel}", data, "application/octet-stream", metadata={"sha256": digests[rel]})
        source = object_uri(store, folder)
        entry = ModelEntry(name=training["name"], source=source, family=teacher.family, arch=teacher.arch,
                           native_size=teacher.native_size, kind="lcm", builtin=False, provenance=f"job:{job_id}",
                           sha256=manifest_digest(digests) if source.startswith("s3://") else None)
        registered_sha = entry.sha256
    else:
        store.put(key, result.weights, "application/octet-stream", metadata={"sha256": digest})
        entry = AdapterEntry(
            name=training["name"], source=object_uri(store, key), arch=teacher.arch,
            kind="accelerator", recipe="lcm-lora", sha256=digest, layout="diffusers",
            addnet_sha256=addnet_sha256_of(result.weights), original_steps=result.original_inference_steps,
            provenance=f"job:{job_id}", builtin=False)
        registered_sha = digest
    artifact = Artifact(store_url=store.url, key=key, sha256=digest, bytes=len(result.weights), width=0, height=0,
                        content_type="application/octet-stream")
    environment = {"device": str(runner.device), "training": {"steps_done": result.steps_done,
                                                              "resumed_from": resume.step,
                                                              "weights": RESULT_FILE[training["output"]]}}
    completion = Completion(job_id, token, artifact, {"denoise_ms": trained_ms, "total_ms": trained_ms + evaluated_ms},
                            settings.batch_size, environment)
    if not ledger.finish_training(completion, evaluation=evaluation, entry=entry, sha256=registered_sha):
        return "skipped"
    log.info("job %s: registered %s (%s steps, evaluation %s)", job_id, entry.name, result.steps_done,
             evaluation.get("one_step_error"))
    return "succeeded"
