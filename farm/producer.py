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

    def as_dict(self) -> dict:
        return {"batch": self.batch, "jobs": self.jobs, "created": self.created,
                "base_seed": self.base_seed, "messages": self.messages, "warnings": self.warnings}


def micro_batches(specs: list[JobSpec], job_ids: list[int], size: int) -> list[tuple[str, list[int]]]:
    """Group jobs with identical settings (prompts and seeds may differ), in submission order,
    into chunks of at most ``size``: each chunk is one message and one pipeline call.
    Returns (model, job ids) pairs: the model names the queue."""
    groups: dict[tuple, list[int]] = {}
    models: dict[tuple, str] = {}
    for spec, job_id in zip(specs, job_ids):
        groups.setdefault(spec.group_key, []).append(job_id)
        models[spec.group_key] = spec.model
    return [(models[key], ids[i:i + size]) for key, ids in groups.items() for i in range(0, len(ids), size)]


def request_digest(rows: list[PromptRow], defaults: JobRequest, variants: int, seed: int | None,
                   priority: int) -> str:
    """Digest of the submission as given, so a reused idempotency key can be told apart from a
    different request (the random base seed is not part of it)."""
    payload = {
        "rows": [{"request": asdict(r.request), "variants": r.variants} for r in rows],
        "defaults": asdict(defaults), "variants": variants, "seed": seed, "priority": priority,
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

    @property
    def warnings(self) -> list[str]:
        return sorted({w for s in self.specs for w in s.warnings})

    @property
    def request_digest(self) -> str:
        return request_digest(self.rows, self.defaults, self.variants, self.seed, self.priority)

    def record(self) -> dict:
        """The submission as given, JSON-ready, for the batch row."""
        rows = [{"where": r.where, **{k: v for k, v in asdict(r.request).items() if v not in (None, ())},
                 **({"variants": r.variants} if r.variants else {})} for r in self.rows]
        defaults = {k: v for k, v in asdict(self.defaults).items() if v not in (None, ())}
        record = {"rows": rows, "defaults": defaults, "variants": self.variants, "seed": self.seed}
        return json.loads(json.dumps(record, default=str))


def plan(rows: list[PromptRow], defaults: JobRequest, *, variants: int, seed: int | None,
         catalog: Catalog, default_model: str, rng: random.Random, priority: int = 0) -> Plan:
    """Expand and validate a whole submission (pure): every job is checked before anything is
    written, and a bad field raises ``InputError`` naming it (and the file row it came from)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise InputError("priority", f"{priority!r} is outside 0..{MAX_PRIORITY}")
    base_seed = seed if seed is not None else rng.randrange(0, MAX_SEED // 2)
    specs = []
    for where, request in expand(rows, defaults, variants, base_seed):
        try:
            specs.append(resolve_job(request, catalog, default_model))
        except InputError as exc:
            if where:  # point at the file row the bad field came from
                raise InputError(where, str(exc)) from None
            raise
    return Plan(rows, defaults, variants, seed, priority, base_seed, specs)


def check_key(key: str | None) -> str | None:
    if key is not None and (not key or len(key) > 128 or any(ord(c) < 33 or ord(c) == 127 for c in key)):
        raise InputError("key", "an idempotency key is 1-128 printable characters without spaces")
    return key


def submit(ledger, publisher: Publishes | None, plan: Plan, *, micro_batch: int, key: str | None = None,
           submitter: str = "") -> SubmitResult:
    """Write the planned batch (one transaction) and publish its micro-batches of job ids."""
    check_key(key)
    new = ledger.create_batch(
        specs=plan.specs, spec=plan.record(), request_digest=plan.request_digest,
        base_seed=plan.base_seed, priority=plan.priority, submitter=submitter, idempotency_key=key,
    )
    result = SubmitResult(new.id, len(new.job_ids), new.created, plan.base_seed, new.job_ids, 0, plan.warnings)
    if not new.created:
        # the batch exists; its jobs were published when it was created
        result.base_seed = ledger.get_batch(new.id).base_seed
        return result
    if publisher is not None:
        groups = micro_batches(plan.specs, new.job_ids, micro_batch)
        result.messages = publisher.publish(groups, priority=plan.priority)
        ledger.mark_enqueued(new.job_ids)
    return result
