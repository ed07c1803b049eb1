"""The producer: validate a submission, expand it, write the ledger, enqueue micro-batches.

Order matters: every job is validated before anything is written; the batch and its jobs are
written in one transaction; only then are job ids published. A publish that fails leaves the jobs
queued in the ledger, where ``farm reconcile`` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from farm.errors import InputError
from farm.fleet.costs import CostModel
from farm.jobs.kinds import input_key
from farm.jobs.plan import Plan, check_idempotency_key
from farm.jobs.spec import JobSpec


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


def submit(ledger, publisher: Publishes | None, plan: Plan, *, micro_batch: int, key: str | None = None,
           submitter: str = "", force: bool = False, store=None, tenant: str = "local",
           costs: CostModel | None = None) -> SubmitResult:
    """Write the planned batch (one transaction) and publish its micro-batches of job ids.

    A job whose digest already has a stored image is recorded as reused from it and not rendered,
    unless ``force``: re-submitting a sweep renders nothing, extending it renders the new cells.
    The input images the jobs start from go to ``store`` first (``inputs/<sha256>.png``, once).
    ``tenant``: whose batch it is (issue 23); only its own images are reused.
    ``publisher`` None: nothing is published here (with fair share, the dispatcher publishes the
    jobs later, in fair order between tenants: farm.fleet.dispatcher).
    Each job carries its estimated GPU time (``costs``: a long-lived process's estimates, read
    from the ledger once per setting and TTL rather than per submission); a tenant's quotas are
    checked against it as the batch is written (QuotaExceeded: nothing written).
    """
    check_idempotency_key(key)
    store_inputs(store, plan.inputs)
    for manifest_key, manifest in plan.datasets.items():  # after its images: it names them
        if not store.exists(manifest_key):
            store.put(manifest_key, manifest, "application/jsonl")
    found = {} if force else ledger.reusable((s.digest for s in plan.specs),
                                             tenant=None if tenant == "local" else tenant)
    reuse = {i: found[spec.digest] for i, spec in enumerate(plan.specs) if spec.digest in found}
    costs = costs or CostModel(ledger)
    new = ledger.create_batch(
        specs=plan.specs, spec=plan.record(), request_digest=plan.request_digest,
        base_seed=plan.base_seed, priority=plan.priority, submitter=submitter, idempotency_key=key,
        axes=plan.axes, reuse=reuse, enqueued=publisher is not None, tenant=tenant,
        costs_ms=[costs.image_ms(spec) for spec in plan.specs],
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
