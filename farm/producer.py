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
from farm.spec import MAX_SEED, Catalog, JobRequest, JobSpec, resolve_job
from farm.variants import PromptRow, expand

MAX_PRIORITY = 9


class Publishes(Protocol):
    def publish(self, groups, *, priority: int = 0, queue: str | None = None) -> int: ...


@dataclass
class SubmitResult:
    batch: str
    jobs: int
    created: bool
    base_seed: int
    job_ids: list[int]
    messages: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"batch": self.batch, "jobs": self.jobs, "created": self.created,
                "base_seed": self.base_seed, "messages": self.messages, "warnings": self.warnings}


def micro_batches(specs: list[JobSpec], job_ids: list[int], size: int) -> list[list[int]]:
    """Group jobs with identical settings (prompts and seeds may differ), in submission order,
    into chunks of at most ``size``: each chunk is one message and one pipeline call."""
    groups: dict[tuple, list[int]] = {}
    for spec, job_id in zip(specs, job_ids):
        groups.setdefault(spec.group_key, []).append(job_id)
    return [ids[i:i + size] for ids in groups.values() for i in range(0, len(ids), size)]


def request_digest(rows: list[PromptRow], defaults: JobRequest, variants: int, seed: int | None,
                   priority: int) -> str:
    """Digest of the submission as given, so a reused idempotency key can be told apart from a
    different request (the random base seed is not part of it)."""
    payload = {
        "rows": [{"request": asdict(r.request), "variants": r.variants} for r in rows],
        "defaults": asdict(defaults), "variants": variants, "seed": seed, "priority": priority,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def plan(rows: list[PromptRow], defaults: JobRequest, *, variants: int, seed: int | None,
         catalog: Catalog, default_model: str, rng: random.Random) -> tuple[int, list[JobSpec]]:
    """Expand and validate a whole submission (pure). Returns (base seed, job specs)."""
    base_seed = seed if seed is not None else rng.randrange(0, MAX_SEED // 2)
    specs = []
    for where, request in expand(rows, defaults, variants, base_seed):
        try:
            specs.append(resolve_job(request, catalog, default_model))
        except InputError as exc:
            if where:  # point at the file row the bad field came from
                raise InputError(where, str(exc)) from None
            raise
    return base_seed, specs


def submit(ledger, publisher: Publishes | None, *, rows: list[PromptRow], defaults: JobRequest,
           variants: int, seed: int | None, catalog: Catalog, default_model: str, micro_batch: int,
           rng: random.Random, priority: int = 0, key: str | None = None, submitter: str = "",
           queue: str | None = None) -> SubmitResult:
    if not 0 <= priority <= MAX_PRIORITY:
        raise InputError("priority", f"{priority} is outside 0..{MAX_PRIORITY}")
    if key is not None and (not key or len(key) > 128 or any(ord(c) < 33 for c in key)):
        raise InputError("key", "an idempotency key is 1-128 printable characters without spaces")
    base_seed, specs = plan(rows, defaults, variants=variants, seed=seed, catalog=catalog,
                            default_model=default_model, rng=rng)
    spec_record = {
        "rows": [{"where": r.where, **{k: v for k, v in asdict(r.request).items() if v not in (None, ())},
                  **({"variants": r.variants} if r.variants else {})} for r in rows],
        "defaults": {k: v for k, v in asdict(defaults).items() if v not in (None, ())},
        "variants": variants, "seed": seed,
    }
    new = ledger.create_batch(
        specs=specs, spec=json.loads(json.dumps(spec_record, default=str)),
        request_digest=request_digest(rows, defaults, variants, seed, priority),
        base_seed=base_seed, priority=priority, submitter=submitter, idempotency_key=key,
    )
    warnings = sorted({w for s in specs for w in s.warnings})
    result = SubmitResult(new.id, len(new.job_ids), new.created, base_seed, new.job_ids, 0, warnings)
    if not new.created:
        # the batch exists; its jobs were published when it was created
        result.base_seed = ledger.get_batch(new.id).base_seed
        return result
    if publisher is not None:
        groups = micro_batches(specs, new.job_ids, micro_batch)
        result.messages = publisher.publish(groups, priority=priority, queue=queue)
        ledger.mark_enqueued(new.job_ids)
    return result
