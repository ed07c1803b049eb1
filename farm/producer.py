"""The producer: validate a submission, expand it, write the ledger, enqueue micro-batches.

Order matters: every job is validated before anything is written; the batch and its jobs are
written in one transaction; only then are job ids published. A publish that fails leaves the jobs
queued in the ledger, where ``farm reconcile`` finds them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Protocol

from farm.errors import InputError
from farm.kinds import INPUT_FIELDS, InputInfo, input_key
from farm.spec import FIRST_REQUEST_FIELDS, MAX_SEED, Catalog, JobRequest, JobSpec, resolve_job
from farm.states import MAX_PRIORITY
from farm.sweep import Sweep
from farm.variants import PromptRow, expand


class Publishes(Protocol):
    def publish(self, groups, *, priority: int = 0) -> int: ...


@dataclass
class SubmitResult:
    batch: str
    jobs: int
    created: bool
    base_seed: int
    job_ids: list[int]
    messages: int = 0
    warnings: list[str] = field(default_factory=list)
    to_render: int = 0
    reused: int = 0

    def as_dict(self) -> dict:
        return {"batch": self.batch, "jobs": self.jobs, "to_render": self.to_render, "reused": self.reused,
                "created": self.created, "base_seed": self.base_seed, "messages": self.messages,
                "warnings": self.warnings}


def micro_batches(specs: list[JobSpec], job_ids: list[int], size) -> list[tuple[str, list[int]]]:
    """Group jobs with identical settings (prompts and seeds may differ), in submission order,
    into chunks of at most ``size`` (a number, or a function of the group's first spec, so large
    SDXL images travel in smaller micro-batches than small SD1.5 ones): each chunk is one message
    and one pipeline call. Returns (model, job ids) pairs: the model names the queue."""
    size_of = size if callable(size) else (lambda _spec: size)
    groups: dict[tuple, list[int]] = {}
    firsts: dict[tuple, JobSpec] = {}
    for spec, job_id in zip(specs, job_ids):
        groups.setdefault(spec.group_key, []).append(job_id)
        firsts.setdefault(spec.group_key, spec)
    out = []
    for key, ids in groups.items():
        n = max(1, size_of(firsts[key]))
        out += [(firsts[key].model, ids[i:i + n]) for i in range(0, len(ids), n)]
    return out


def _given(request: JobRequest) -> dict:
    """The request's fields for its digest: later fields only when given (FIRST_REQUEST_FIELDS)."""
    return {k: v for k, v in asdict(request).items() if k in FIRST_REQUEST_FIELDS or v is not None}


def request_digest(rows: list[PromptRow], defaults: JobRequest, variants: int, seed: int | None,
                   priority: int, sweep: Sweep = Sweep()) -> str:
    """Digest of the submission as given, so a reused idempotency key can be told apart from a
    different request (the random base seed is not part of it)."""
    payload = {
        "rows": [{"request": _given(r.request), "variants": r.variants} for r in rows],
        "defaults": _given(defaults), "variants": variants, "seed": seed, "priority": priority,
        "axes": [[name, list(values)] for g in sweep.groups for name, values in g],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Plan:
    """A validated submission, ready to be written: nothing here has touched the ledger yet."""

    rows: list[PromptRow]
    defaults: JobRequest
    variants: int
    seed: int | None  # as given (None: base_seed was drawn at random)
    priority: int
    base_seed: int
    specs: list[JobSpec]
    axes: list[dict] = field(default_factory=list)  # each job's sweep cell, for contact sheets
    sweep: Sweep = Sweep()
    # issue 13: the input images the jobs name, canonical PNGs by sha256, stored by ``submit``
    inputs: dict[str, bytes] = field(default_factory=dict)
    # issue 14: a training job's dataset manifests by store key (farm.datasets), stored by ``submit``
    datasets: dict[str, bytes] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return sorted({w for s in self.specs for w in s.warnings})

    @property
    def request_digest(self) -> str:
        return request_digest(self.rows, self.defaults, self.variants, self.seed, self.priority, self.sweep)

    def record(self) -> dict:
        """The submission as given, JSON-ready, for the batch row."""
        rows = [{"where": r.where, **{k: v for k, v in asdict(r.request).items() if v not in (None, ())},
                 **({"variants": r.variants} if r.variants else {})} for r in self.rows]
        defaults = {k: v for k, v in asdict(self.defaults).items() if v not in (None, ())}
        record = {"rows": rows, "defaults": defaults, "variants": self.variants, "seed": self.seed,
                  "axes": [[[name, list(values)] for name, values in g] for g in self.sweep.groups]}
        return json.loads(json.dumps(record, default=str))


def plan(rows: list[PromptRow], defaults: JobRequest, *, variants: int, seed: int | None,
         catalog: Catalog, default_model: str, rng: random.Random, priority: int = 0,
         sweep: Sweep = Sweep(), inputs=None) -> Plan:
    """Expand and validate a whole submission (pure but for ``inputs``): every job is checked
    before anything is written, and a bad field raises ``InputError`` naming it (and the file row
    it came from). ``inputs`` (a ``farm.inputs.InputReader``) reads the images jobs start from."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise InputError("priority", f"{priority!r} is outside 0..{MAX_PRIORITY}")
    base_seed = seed if seed is not None else rng.randrange(0, MAX_SEED // 2)
    specs, axes = [], []
    infos: dict[str, InputInfo] = {}
    images: dict[str, bytes] = {}
    for where, request, cell in expand(rows, defaults, variants, base_seed, sweep):
        try:
            if any(getattr(request, name) is not None for name in INPUT_FIELDS):  # issue 13
                from farm.inputs import with_inputs

                request = with_inputs(request, inputs, infos, images)
            specs.append(resolve_job(request, catalog, default_model, inputs=infos))
        except InputError as exc:
            if where:  # point at the file row the bad field came from
                raise InputError(where, str(exc)) from None
            raise
        axes.append(cell)
    return Plan(rows, defaults, variants, seed, priority, base_seed, specs, axes, sweep, images)


def check_key(key: str | None) -> str | None:
    if key is not None and (not key or len(key) > 128 or any(ord(c) < 33 or ord(c) == 127 for c in key)):
        raise InputError("key", "an idempotency key is 1-128 printable characters without spaces")
    return key


def submit(ledger, publisher: Publishes | None, plan: Plan, *, micro_batch: int, key: str | None = None,
           submitter: str = "", force: bool = False, store=None) -> SubmitResult:
    """Write the planned batch (one transaction) and publish its micro-batches of job ids.

    A job whose digest already has a stored image is recorded as reused from it and not rendered,
    unless ``force``: re-submitting a sweep renders nothing, extending it renders the new cells.
    The input images the jobs start from go to ``store`` first (``inputs/<sha256>.png``, once).
    """
    check_key(key)
    store_inputs(store, plan.inputs)
    for manifest_key, manifest in plan.datasets.items():  # after its images: it names them
        if not store.exists(manifest_key):
            store.put(manifest_key, manifest, "application/jsonl")
    found = {} if force else ledger.reusable(s.digest for s in plan.specs)
    reuse = {i: found[spec.digest] for i, spec in enumerate(plan.specs) if spec.digest in found}
    new = ledger.create_batch(
        specs=plan.specs, spec=plan.record(), request_digest=plan.request_digest,
        base_seed=plan.base_seed, priority=plan.priority, submitter=submitter, idempotency_key=key,
        axes=plan.axes, reuse=reuse, enqueued=publisher is not None,
    )
    result = SubmitResult(new.id, len(new.job_ids), new.created, plan.base_seed, new.job_ids, 0, plan.warnings)
    if not new.created:
        # the batch exists; its jobs were published when it was created
        result.base_seed = ledger.get_batch(new.id).base_seed
        counts = ledger.batch_counts(new.id)
        result.to_render = counts["queued"] + counts["running"]
        return result
    to_render = new.to_render if new.to_render is not None else new.job_ids
    result.to_render, result.reused = len(to_render), len(new.job_ids) - len(to_render)
    if publisher is not None and to_render:
        wanted = set(to_render)
        pairs = [(spec, job_id) for spec, job_id in zip(plan.specs, new.job_ids) if job_id in wanted]
        groups = micro_batches([p for p, _ in pairs], [j for _, j in pairs], micro_batch)
        result.messages = publisher.publish(groups, priority=plan.priority)  # marked in create_batch
    return result


def store_inputs(store, images: dict[str, bytes]) -> int:
    """Store input images that the store lacks (content-addressed: each once); how many were new."""
    if images and store is None:
        raise InputError("init_image", "image inputs need the farm's store")
    stored = 0
    for sha256, data in images.items():
        key = input_key(sha256)
        if not store.exists(key):
            store.put(key, data, "image/png", metadata={"sha256": sha256})
            stored += 1
    return stored


def republish(ledger, publisher: Publishes, job_ids: list[int], *, micro_batch: int) -> int:
    """Publish jobs again (after a retry, a resume or a promotion), grouped into micro-batches
    like a submission, each at its job's priority."""
    jobs = ledger.load_jobs(job_ids)
    groups: dict[tuple, list[int]] = {}
    for job in jobs:
        groups.setdefault((job.priority, job.spec.model, job.spec.group_key), []).append(job.id)
    sent = 0
    for (priority, model, _), ids in groups.items():
        sent += publisher.publish([(model, ids[i:i + micro_batch]) for i in range(0, len(ids), micro_batch)],
                                  priority=priority)
    ledger.mark_enqueued([j.id for j in jobs])
    return sent


def estimate(ledger, plan: Plan, *, force: bool = False) -> dict:
    """What a submission would do, without doing it: jobs, renders, reuses and an ETA from the
    ledger's recorded time per image for the same model, recipe, size and steps."""
    found = {} if force else ledger.reusable(s.digest for s in plan.specs)
    pending = [s for s in plan.specs if s.digest not in found]
    by_settings: dict[tuple, int] = {}
    for spec in pending:
        key = (spec.model, spec.recipe, spec.width, spec.height, spec.steps)
        by_settings[key] = by_settings.get(key, 0) + 1
    total_ms, unknown = 0.0, 0
    for (model, recipe, width, height, steps), count in by_settings.items():
        per_image = ledger.history_ms(model=model, recipe=recipe, width=width, height=height, steps=steps)
        if per_image is None:
            unknown += count
        else:
            total_ms += per_image * count
    workers = max(1, ledger.active_workers())
    return {
        "jobs": len(plan.specs), "to_render": len(pending), "reused": len(plan.specs) - len(pending),
        "axes": plan.sweep.summary(), "prompts": len({s.prompt for s in plan.specs}),
        "models": sorted({s.model for s in plan.specs}), "recipes": sorted({s.recipe for s in plan.specs}),
        "workers": workers,
        "eta_s": None if unknown else round(total_ms / 1000 / workers, 1),
        "eta": "unknown" if unknown else f"{total_ms / 1000 / workers:.1f}s",
        "without_history": unknown, "warnings": plan.warnings,
    }
