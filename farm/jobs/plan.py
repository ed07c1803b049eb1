"""A submission, expanded and validated: the ``Plan`` that the producer writes. Pure but for the
``inputs`` reader it is handed (farm.intake): nothing here touches the ledger, the store or the
broker, so a dry run, the API's ``plan`` and ``submit`` all check a submission the same way."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from farm.errors import InputError
from farm.jobs.inputs import with_inputs
from farm.jobs.kinds import INPUT_FIELDS, InputInfo
from farm.jobs.spec import FIRST_REQUEST_FIELDS, MAX_SEED, Catalog, JobRequest, JobSpec, resolve_job
from farm.jobs.states import MAX_PRIORITY
from farm.jobs.sweep import Sweep
from farm.jobs.variants import PromptRow, expand


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
    # issue 14: a training job's dataset manifests by store key (farm.jobs.datasets), stored by ``submit``
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
    it came from). ``inputs`` (a ``farm.intake.images.InputReader``) reads the images jobs start from."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise InputError("priority", f"{priority!r} is outside 0..{MAX_PRIORITY}")
    base_seed = seed if seed is not None else rng.randrange(0, MAX_SEED // 2)
    specs, axes = [], []
    infos: dict[str, InputInfo] = {}
    images: dict[str, bytes] = {}
    for where, request, cell in expand(rows, defaults, variants, base_seed, sweep):
        try:
            if any(getattr(request, name) is not None for name in INPUT_FIELDS):  # issue 13
                request = with_inputs(request, inputs, infos, images)
            specs.append(resolve_job(request, catalog, default_model, inputs=infos))
        except InputError as exc:
            if where:  # point at the file row the bad field came from
                raise InputError(where, str(exc)) from None
            raise
        axes.append(cell)
    return Plan(rows, defaults, variants, seed, priority, base_seed, specs, axes, sweep, images)


def check_idempotency_key(key: str | None) -> str | None:
    if key is not None and (not key or len(key) > 128 or any(ord(c) < 33 or ord(c) == 127 for c in key)):
        raise InputError("key", "an idempotency key is 1-128 printable characters without spaces")
    return key
