"""The farm as a Python library: what the ``farm`` CLI does, for scripts and pipelines.

```python
import farm

with farm.Farm.local(home="/tmp/x", workers=1) as f:   # private Redis + workers, stopped on exit
    batch = f.submit("a red fox in snow", model="tiny-sd", variants=4, seed=10)
    f.wait(batch, timeout=600)                          # counts per state; FarmTimeout if not done
    paths = f.download(batch, "out/")                   # verified by sha256, plus out/index.html
f = farm.Farm.connect()                                 # a running fleet, configured by FARM_*
```

Bad input raises ``farm.InputError`` whose text is the CLI's one-line message; nothing has been
written then. Every other failure is a ``farm.FarmError`` (``NotFound``, ``ConflictError``,
``InfrastructureError``, ``FarmTimeout``). A ``Farm`` is not thread-safe: use one per thread.
"""

from __future__ import annotations

import getpass
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, TextIO

from farm.config import Config, load_config
from farm.errors import ConflictError, FarmTimeout, InfrastructureError, InputError
from farm.fleet import localfarm
from farm.fleet.producer import SubmitResult, estimate, republish, submit
from farm.jobs import states
from farm.jobs.plan import Plan, check_idempotency_key
from farm.jobs.planning import plan_submission
from farm.results.progress import NoWorkerNotice, TrainingProgress, watch

if TYPE_CHECKING:  # the ledger (sqlalchemy) is imported on first use, not with the API
    from farm.ledger import BatchSummary, JobView

FLEET_CHECK_S = 2.0  # how often a wait reads the workers table
HEALTH_CHECK_S = 1.0  # how often a wait looks at the local farm it owns
READ_GAP_S = 0.1  # a wait reads a large batch's counts at most this often, doorbell or not
KEY_TOUCH_S = 60.0  # how often this process records an API key's last use
MAX_RESTARTS, RESTART_WINDOW_S = 5, 600.0  # more restarts than this in the window: give up


class FarmWarning(UserWarning):
    """A submission was accepted with a caveat (e.g. a negative prompt that guidance <= 1 ignores)."""


@dataclass(frozen=True)
class Requeued:
    """Jobs a retry or a resume queued again, and the broker messages that carry them."""

    batch: str
    job_ids: list[int]
    messages: int


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env``'s FARM_* settings in place of this process's; every other variable (PATH, AWS_*,
    HF_*) is inherited, so the processes a local farm starts run like this one."""
    if env is None:
        return dict(os.environ)
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FARM_")}, **env}


def _submitter() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return ""


def _registry_kind(entry) -> str:
    from farm.models.catalog import AdapterEntry, ControlNetEntry, EmbeddingEntry, ModelEntry, MotionAdapterEntry

    return {ModelEntry: "model", AdapterEntry: "adapter", EmbeddingEntry: "embedding",
            ControlNetEntry: "controlnet", MotionAdapterEntry: "motion"}[type(entry)]


def _exit_on_sigterm(signum, _frame):
    # the normal way out, so `with Farm.local(...)` and try/finally blocks stop what they started
    raise SystemExit(128 + signum)


class Farm:
    """A client of one farm: its ledger, its broker and its store, as FARM_* configure them.

    Build one with ``Farm.connect()`` (a farm that runs already) or ``Farm.local()`` (start the
    private Redis and workers here, stop them on ``close()``). Close it, or use it as a context
    manager, to release connections and stop what it started.
    """

    def __init__(self, config: Config, *, env: Mapping[str, str] | None = None):
        self.config = config
        self.env = dict(os.environ if env is None else env)  # for the processes it starts
        self.no_worker_warn_s = config.no_worker_warn_s
        self._ledger = None
        self._publisher = None
        self._costs = None  # GPU-time estimates per setting (farm.fleet.costs), kept between submissions
        self._owns_workers = False
        self._owns_redis = False
        self._devices: list[str] = []
        self._supervisor: int | None = None
        self._restarts: list[float] = []
        self._next_health_check = 0.0
        self._previous_sigterm = None
        self._secret: bytes | None = None
        self._touched: dict[str, float] = {}  # key prefix -> when this process last recorded its use

    # -- building one ----------------------------------------------------------------------------
    @classmethod
    def connect(cls, env: Mapping[str, str] | None = None) -> "Farm":
        """The farm FARM_* describe (``env``'s FARM_* variables in place of this process's)."""
        environment = _environment(env)
        return cls(load_config(environment), env=environment)

    @staticmethod
    def remote(url: str, key: str, **options):
        """A farm over its HTTP API (``farm serve``): the same methods for submitting, watching and
        fetching, with no database or broker settings here (``farm.client.remote.RemoteFarm``)."""
        from farm.client.remote import RemoteFarm

        return RemoteFarm(url, key, **options)

    @classmethod
    def local(cls, home: str | os.PathLike | None = None, workers: int | None = None, devices: str | None = None,
              env: Mapping[str, str] | None = None) -> "Farm":
        """A farm on this machine under ``home`` (default FARM_HOME or ./.farm): starts the private
        Redis (with no FARM_BROKER_URL) and ``workers`` CPU worker processes (default 1) or one per
        GPU in ``devices`` ("0,1"), unless they run already. ``close()`` stops what this started;
        while it waits, workers that died are started again."""
        environment = _environment(env)
        if home is not None:
            environment["FARM_HOME"] = os.fspath(home)
        farm = cls(load_config(environment), env=environment)
        try:
            farm.start_local(workers=workers, devices=devices)
        except BaseException:
            farm.close()
            raise
        return farm

    def start_local(self, workers: int | None = None, devices: str | None = None) -> "Farm":
        """Start the private Redis and a worker supervisor under the farm home unless they run;
        this farm then owns them: ``close()`` stops them, ``wait()`` restarts them if they die,
        they stop by themselves if this process dies, and SIGTERM ends this process through
        ``SystemExit`` (status 143) so its cleanup runs."""
        self._devices = localfarm.parse_devices(devices, workers)  # bad input: nothing started yet
        self.ledger  # noqa: B018 - open (and migrate) the ledger before workers race to
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        redis_was_up = not self.config.uses_embedded_broker or localfarm.redis_alive(self.config)
        if localfarm.supervisor_pid(self.config) is None:
            self._owns_redis = not redis_was_up
            self._owns_workers = True
            self._supervisor = self._start_supervisor()["pid"]
        return self

    def _start_supervisor(self) -> dict:
        return localfarm.up(self.config, self._devices, env=self.env, owner_pid=os.getpid(),
                            owner_redis=self._owns_redis)

    def stop_local(self) -> None:
        """Stop what ``local()``/``start_local()`` started: the workers finish or hand back their
        current micro-batch, then the private Redis stops. The ledger stays open."""
        if self._previous_sigterm is not None:
            # a second SIGTERM while stopping ends the process; the supervisor then sees its owner
            # gone and stops itself
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._publisher is not None and self._owns_redis:
            self._publisher.close()  # before its Redis goes away
            self._publisher = None
        if self._owns_workers:
            self._owns_workers = False
            localfarm.stop_workers(self.config)
        if self._owns_redis:
            self._owns_redis = False
            localfarm.stop_redis(self.config)

    def close(self) -> None:
        """``stop_local()``, then release the ledger and broker connections. Safe to call twice."""
        try:
            self.stop_local()
        finally:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    def __enter__(self) -> "Farm":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- the parts, opened on first use ------------------------------------------------------------
    @property
    def ledger(self):
        """The SQL ledger (``farm.ledger.Ledger``); a fresh SQLite ledger is created and migrated."""
        if self._ledger is None:
            from farm.ledger import Ledger

            self._ledger = Ledger(self.config.database_url)
        return self._ledger

    @property
    def publisher(self):
        """The broker publisher; starts the private Redis when it is the broker and not running."""
        if self._publisher is None:
            from farm.fleet.dispatch import Publisher

            self._publisher = Publisher(self.config, localfarm.ensure_redis(self.config))
        return self._publisher

    def catalog(self):
        """Built-in plus registered models and adapters. A farm home whose SQLite ledger does not
        exist yet has registered nothing, and reading it must not create it (bad input writes nothing)."""
        from farm.jobs.spec import Catalog

        ledger = self._existing_ledger()
        return Catalog() if ledger is None else ledger.catalog()

    def _existing_ledger(self):
        """The ledger, or None for a farm home whose SQLite ledger does not exist yet (reading must
        not create it: bad input writes nothing)."""
        url = self.config.database_url
        if self._ledger is None and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
            return None
        return self.ledger

    def input_reader(self, policy=None):
        """What reads a submission's input images (issue 13): files, s3:// objects, earlier jobs'
        images (``job:ID``), uploads (``input:<sha256>``) and batches (``from_batch``); a
        ``farm.intake.images.InputReader``. ``policy`` (farm.tenancy.policy): what the submitter
        may name (default: the operator, anything)."""
        from farm.intake.images import InputReader
        from farm.tenancy.policy import OPERATOR

        return InputReader(ledger=self._existing_ledger, s3_endpoint_url=self.config.s3_endpoint_url,
                           policy=policy or OPERATOR, store_url=self.config.store_url)

    # -- submitting ----------------------------------------------------------------------------------
    def plan(self, prompt: str | None = None, *, file=None, spec=None, variants: int = 1, seed: int | None = None,
             seeds=None, model: str | None = None, recipe: str | None = None, steps=None, guidance=None, size=None,
             negative: str | None = None, adapters=(), decoder: str | None = None, wildcards=None,
             wildcard_mode: str | None = None, wildcard_count: int | None = None, priority: int = 0, rng=None,
             from_batch: str | None = None, spec_data: dict | None = None, policy=None, **job_fields) -> Plan:
        """Validate and expand a submission without writing anything (the options of ``farm
        submit``; ``spec`` is a spec file and ``spec_data`` its fields as a mapping, ``wildcards`` a
        directory of __name__ lists; ``policy``: what the submitter may name, farm.tenancy.policy). Axes:
        ``steps="1-8"``, ``guidance=[1, 1.5]``, ``seeds="0-3"``, ``adapters=["toy:0.2,0.8"]``.

        Jobs that start from images (issue 13): ``kind``, ``init_image``, ``mask_image``,
        ``control_image`` (a path, an s3:// URI or ``"job:ID"``; a list is an axis), ``strength``,
        ``mask_blur``, ``controlnet``, ``control_scale``, ``control_preprocess="canny"``, ``upscale``
        (the hires factor), and ``from_batch`` (every succeeded image of a batch, as init images)."""
        return plan_submission(
            self.catalog(), self.config.default_model, prompt=prompt, file=file, spec_file=spec, variants=variants,
            seed=seed, seeds=seeds, model=model, recipe=recipe, steps=steps, guidance=guidance, size=size,
            negative=negative, adapters=adapters, decoder=decoder, wildcard_dir=wildcards,
            wildcard_mode=wildcard_mode, wildcard_count=wildcard_count, priority=priority, rng=rng,
            from_batch=from_batch, inputs=self.input_reader(policy), spec_data=spec_data, **job_fields)

    def dry_run(self, prompt: str | None = None, *, force: bool = False, **options) -> dict:
        """What ``submit`` would do (``farm submit --dry-run --json``): jobs, renders, reuses, axes
        and an ETA from recorded timings. Writes and enqueues nothing."""
        return self.estimate(self.plan(prompt, **options), force=force)

    def estimate(self, planned: Plan, *, force: bool = False) -> dict:
        """``dry_run`` of a plan already made."""
        return estimate(self.ledger, planned, force=force)

    def submit(self, prompt: str | None = None, *, key: str | None = None, force: bool = False, **options) -> str:
        """Validate, expand, record and enqueue a batch; returns its id. ``options``: those of
        ``plan``. ``key``: an idempotency key (the same key returns the same batch); ``force``:
        render even jobs whose image exists. Caveats are issued as ``FarmWarning``. For the
        whole ``SubmitResult`` (jobs, to_render, reused, base_seed), use ``submit_plan(plan(...))``."""
        check_idempotency_key(key)
        planned = self.plan(prompt, **options)
        for message in planned.warnings:
            warnings.warn(message, FarmWarning, stacklevel=2)
        return self.submit_plan(planned, key=key, force=force).batch

    def submit_spec(self, path: str | os.PathLike, **overrides) -> str:
        """Submit a spec file (.yaml or .json: prompts, axes, wildcards); ``overrides`` beat its fields."""
        return self.submit(spec=os.fspath(path), **overrides)

    def submit_plan(self, planned: Plan, *, key: str | None = None, force: bool = False,
                    tenant: str = "local") -> SubmitResult:
        """Record and enqueue a planned batch (one transaction, then its micro-batches of job ids).
        ``tenant``: whose batch it is (the HTTP API's; this library is the operator, ``local``)."""
        store = None
        if planned.inputs or planned.datasets:  # issue 13: input images go to the store before the batch is recorded
            from farm.storage import open_store

            store = open_store(self.config.store_url, s3_endpoint_url=self.config.s3_endpoint_url)
        # fair share: the dispatcher publishes, late and in fair order (farm.fleet.dispatcher)
        publisher = self.publisher if self.config.scheduler == "fifo" else None
        if self._costs is None:
            from farm.fleet.costs import CostModel

            self._costs = CostModel(self.ledger)
        return submit(self.ledger, publisher, planned, costs=self._costs,
                      micro_batch=lambda spec: self.config.micro_batch_for(spec.family, spec.width, spec.height),
                      key=check_idempotency_key(key), submitter=_submitter(), force=force, store=store,
                      tenant=tenant)

    # -- training (issue 14) --------------------------------------------------------------------------
    def plan_distill(self, teacher: str, data: str, name: str, *, seed: int | None = None, priority: int = 0,
                     rng=None, policy=None, **settings) -> Plan:
        """Validate a distillation (``farm distill``) without writing anything: the teacher, the
        name of the result, every example of ``data`` (a directory, ``s3://BUCKET/PREFIX`` or
        ``batch:ID``) and the settings (``steps``, ``rank``, ``skip``, ``guidance_range``,
        ``solver``, ``batch_size``, ``lr``, ``checkpoint_every``, ``eval_samples``, ``full``,
        ``resolution``, ``gradient_checkpointing``; farm.jobs.training)."""
        import random

        from farm.intake.datasets import read_dataset
        from farm.jobs.spec import MAX_SEED, JobRequest
        from farm.jobs.training import DistillRequest, resolve_distill
        from farm.jobs.variants import PromptRow
        from farm.models.names import check_name

        catalog = self.catalog()
        teacher_name = check_name("teacher", teacher)
        entry = catalog.models.get(teacher_name)
        if entry is None:
            raise InputError("teacher", f"unknown model {teacher_name!r} (known: {', '.join(sorted(catalog.models))})")
        request = DistillRequest(teacher=teacher_name, name=name, seed=seed, **settings)
        # the cheap checks first: a bad name or setting is refused before the dataset is read
        resolve_distill(request, entry, taken=set(catalog.adapters) | set(catalog.models),
                        data={}, captions=["-"], seed=0)
        dataset = read_dataset(data, self.input_reader(policy))
        base_seed = seed if seed is not None else (rng or random.SystemRandom()).randrange(0, MAX_SEED // 2)
        spec = resolve_distill(request, entry, taken=set(catalog.adapters) | set(catalog.models),
                               data=dataset.record(), captions=dataset.captions, seed=base_seed)
        return Plan([PromptRow(JobRequest(prompt=spec.prompt))], JobRequest(model=teacher_name), 1, seed, priority,
                    base_seed, [spec], inputs=dataset.images, datasets={dataset.key: dataset.manifest})

    def distill(self, teacher: str, data: str, name: str, **options) -> str:
        """Queue a distillation (one training job in a batch of its own); returns the batch id.
        The worker that runs it registers the result under ``name`` (an ``lcm-lora`` accelerator
        for the teacher's arch, or with ``full=True`` a model of kind ``lcm``)."""
        planned = self.plan_distill(teacher, data, name, **options)
        # a training job is never "reused": its result is a registration, not an image
        return self.submit_plan(planned, force=True).batch

    def bind_accelerator(self, model: str, adapter: str, *, recipe: str = "lcm-lora") -> None:
        """Bind ``model`` to its own accelerator for ``recipe`` (checked: the adapter is an
        accelerator of that recipe for the model's arch)."""
        from farm.models.recipes import get_recipe, resolve_recipe

        catalog = self.catalog()
        entry = catalog.models.get(model)
        if entry is None:
            raise InputError("model", f"unknown model {model!r}")
        if not get_recipe(recipe).accelerator:
            raise InputError("recipe", f"the {recipe} recipe loads no accelerator")
        resolve_recipe(recipe, entry, None, None, "", catalog.adapters, adapter)  # refuses what cannot fit
        self.ledger.bind_accelerator(model, recipe, adapter)

    def unbind_accelerator(self, model: str, recipe: str = "lcm-lora") -> None:
        if not self.ledger.unbind_accelerator(model, recipe):
            raise InputError("model", f"{model} has no {recipe} binding")

    # -- following ---------------------------------------------------------------------------------
    def status(self, batch: str) -> "BatchSummary":
        """The batch (``BatchInfo``) with its counts per state: a ``farm.ledger.BatchSummary``."""
        from farm.errors import NotFound
        from farm.ledger import BatchSummary

        if self._ledger is None:  # a fresh client (the CLI): SQLite read without SQLAlchemy where it can
            from farm.ledger.quick import batch_summary

            quick = batch_summary(self.config.database_url, batch)
            if quick is False:
                raise NotFound(f"no batch {batch!r}")
            if quick is not None:
                return quick
        info = self.ledger.get_batch(batch)
        counts = self.ledger.batch_counts(batch)
        return BatchSummary(info, counts, sum(counts[s] for s in states.TERMINAL))

    def wait(self, batch: str, timeout: float | None = None, progress: TextIO | bool | None = None) -> dict[str, int]:
        """Wait until every job of the batch has finished (succeeded, failed or cancelled); returns
        the counts per state. ``progress``: a stream for the progress line (True: stderr).

        Raises ``FarmTimeout`` (with ``.counts``) after ``timeout`` seconds. Says on stderr when no
        live worker is there to render the batch (after FARM_NO_WORKER_WARN_S, default 30 s), and
        restarts the workers of a local farm this client started if they died."""
        stream = sys.stderr if progress is True else (progress or None)
        total = self.ledger.get_batch(batch).job_count
        notice = NoWorkerNotice(batch, self.no_worker_warn_s)
        next_fleet_check = [0.0]
        training = TrainingProgress()

        def check() -> list[str]:
            lines = self._heal()
            if lines:
                notice.reset()  # fresh workers get the whole grace period to register
            if time.monotonic() >= next_fleet_check[0]:
                next_fleet_check[0] = time.monotonic() + FLEET_CHECK_S
                line = notice(self.ledger.workers(), datetime.now(timezone.utc), self.ledger.unfinished_models(batch))
                lines += [line] if line else []
                if stream is not None:  # issue 14: a training job's step, loss, speed and ETA, as they change
                    lines += training.lines(self.ledger.trainings_of_batch(batch))
            return lines

        bell = self._doorbell(batch)  # subscribed before the first read: no ring falls in between
        last = {"at": 0.0, "left": total}

        def read() -> dict[str, int]:
            counts = self.ledger.batch_counts(batch)
            last["at"], last["left"] = time.monotonic(), total - sum(counts[s] for s in states.TERMINAL)
            return counts

        def sleep(interval: float) -> None:
            # every micro-batch rings: while more than one message's worth is left, read at most
            # every READ_GAP_S (the waiter shares the machine with the workers it waits for); the
            # last message's ring is answered at once
            if last["left"] > self.config.micro_batch:
                gap = READ_GAP_S - (time.monotonic() - last["at"])
                if gap > 0:
                    time.sleep(min(gap, interval))
                    interval -= min(gap, interval)
            bell.wait(interval)

        try:
            counts = watch(read, total, stream=stream, timeout=timeout, check=check, notices=stream or sys.stderr,
                           sleep=sleep)
        finally:
            bell.close()
        if sum(counts[s] for s in states.TERMINAL) < total:
            raise FarmTimeout(batch, counts, timeout or 0,
                              sum(n for state, n in counts.items() if state in states.TERMINAL))
        return counts

    def _doorbell(self, batch: str):
        """The batch's doorbell (farm.fleet.doorbell): workers ring it as they record its jobs, so
        a wait wakes at once instead of at its next poll. Only on a broker that runs already: a
        wait never starts the private Redis (a finished batch of a stopped farm needs none)."""
        from farm.fleet.doorbell import Listener

        if self._publisher is None and not localfarm.broker_running(self.config):
            return Listener(None, self.config.queue, batch)
        try:
            return self.publisher.listener(batch)
        except Exception:  # noqa: BLE001 - no doorbell: poll
            return Listener(None, self.config.queue, batch)

    def _heal(self) -> list[str]:
        """Start again what died of the local farm this client owns; the lines that say so.

        Jobs the dead workers held come back through the lease reaper of the new workers' fleet
        maintenance (after FARM_LEASE_S), so nothing renders twice."""
        if not self._owns_workers or time.monotonic() < self._next_health_check:
            return []
        self._next_health_check = time.monotonic() + HEALTH_CHECK_S
        lines = []
        if self.config.uses_embedded_broker and not localfarm.redis_alive(self.config):
            lines.append("farm: the private Redis died; restarting it")
            self._owns_redis = True
        if localfarm.supervisor_pid(self.config) is None:
            lines.append(f"farm: the local workers died (supervisor pid {self._supervisor}); restarting them")
        if not lines:
            return []
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            raise InfrastructureError(f"the local farm died {len(self._restarts)} times in "
                                      f"{RESTART_WINDOW_S / 60:.0f} minutes; see {self.config.run_dir / 'workers.log'}")
        self._supervisor = self._start_supervisor()["pid"]
        return lines

    def jobs(self, batch: str | None = None, state: str | None = None, limit: int | None = None) -> list["JobView"]:
        """Jobs (``farm.ledger.JobView``: id, seed, state, spec, timings in ms, artifact), oldest
        first; of one batch and/or in one state."""
        if state is not None and state not in states.STATES:
            raise InputError("state", f"{state!r} is not one of {', '.join(states.STATES)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InputError("limit", f"{limit!r} is not a positive number")
        if batch:
            self.ledger.get_batch(batch)
        return self.ledger.list_jobs(batch, state, limit)

    def batches(self, limit: int = 50) -> list["BatchSummary"]:
        """Recent batches, newest first (``farm.ledger.BatchSummary``: info, counts, done)."""
        if self._ledger is None:  # a fresh client (the CLI): SQLite read without SQLAlchemy where it can
            from farm.ledger.quick import recent_batches

            quick = recent_batches(self.config.database_url, limit)
            if quick is not None:
                return quick
        return self.ledger.batches(limit)

    # -- results -------------------------------------------------------------------------------------
    def download(self, batch: str, out: str | os.PathLike) -> list[Path]:
        """Copy the batch's stored images into ``out`` (each checked against the ledger's sha256),
        with an ``index.html`` gallery of them and their parameters; the image paths, in job order."""
        from farm.results.artifacts import fetch_batch
        from farm.results.gallery import gallery_html

        out = Path(out)
        fetched = fetch_batch(self.ledger, batch, out, s3_endpoint_url=self.config.s3_endpoint_url)
        rows = {view.id: view.as_dict() for view in self.ledger.list_jobs(batch)}
        self._download_inputs([rows[job_id] for job_id, _ in fetched], out)  # issue 13: beside their variations
        page = gallery_html(batch, [(path.name, rows[job_id]) for job_id, path in fetched])
        (out / "index.html").write_text(page, encoding="utf-8")
        return [path for _, path in fetched]

    def _download_inputs(self, rows: list[dict], out: Path) -> None:
        """The input images the jobs started from, into ``out/inputs/<sha256>.png`` (verified)."""
        from farm.results.artifacts import read_input

        wanted = sorted({row[name] for row in rows for name in ("init_image", "mask_image", "control_image")
                         if row.get(name)})
        if not wanted:
            return
        (out / "inputs").mkdir(parents=True, exist_ok=True)
        for sha256 in wanted:
            (out / "inputs" / f"{sha256}.png").write_bytes(
                read_input(self.config.store_url, sha256, self.config.s3_endpoint_url))

    def contact_sheet(self, batch: str, out: str | os.PathLike, *, cols: str | None = None,
                      rows: str | None = None) -> dict:
        """Draw the batch as a grid labelled with its axis values into the PNG ``out``."""
        from farm.results.artifacts import ArtifactReader, source_cells
        from farm.results.sheets import sheet_cells

        info = self.ledger.get_batch(batch)
        jobs = [view.as_dict() for view in self.ledger.list_jobs(batch)]
        cells, column_axis, row_axis = sheet_cells(jobs, cols, rows)
        reader = ArtifactReader(self.config.s3_endpoint_url)
        images = [(c, r, reader.read(j["store_url"], j["artifact"], j["sha256"])) for c, r, j in cells]
        images = source_cells(cells, self.config.store_url, self.config.s3_endpoint_url) + images  # issue 13
        from engine.sheets import contact_sheet  # draws with PIL: the render engine does

        title = f"batch {batch}  {cells[0][2]['prompt'][:60]}  {info.model}/{info.recipe}"
        if row_axis == "init_image":  # variations (issue 13): say what the short column labels are
            title += f"  ({column_axis.replace('+', ', ')} across)"
        data, grid = contact_sheet(images, title)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(data)
        return {"batch": batch, "out": os.fspath(out), "columns": len(grid.columns), "rows": len(grid.rows),
                "column_axis": column_axis, "row_axis": row_axis, "size": list(grid.size)}

    def replay(self, job: int, device: str = "cpu") -> dict:
        """Re-render a job from its record here; the largest pixel difference to the stored image."""
        if device not in ("cpu", "cuda"):
            raise InputError("device", f"{device!r} is not cpu or cuda")
        [view] = self.ledger.list_jobs(job_id=job) or [None]
        if view is not None and view.spec.training is not None:
            raise InputError("job", f"job {job} is a training job ({view.spec.kind}); replay re-renders images")
        from engine.quiet import QUIET_ENV

        for key, value in QUIET_ENV.items():  # before transformers is imported, or it prints anyway
            os.environ.setdefault(key, value)
        from engine.replay import replay  # renders: the engine is the only code that imports torch

        return replay(self.ledger, job, model_cache=self.config.model_cache, device=device,
                      s3_endpoint_url=self.config.s3_endpoint_url, store_url=self.config.store_url)

    # -- control ---------------------------------------------------------------------------------------
    def cancel(self, batch: str, running: bool = False) -> int:
        """Cancel queued jobs (they never render; with ``running``, running ones stop at their next
        denoising step); how many were cancelled."""
        return self.ledger.cancel(batch, running=running)

    def retry(self, batch: str, failed_only: bool = False) -> Requeued:
        """Queue failed (and, unless ``failed_only``, cancelled) jobs again, each with a new attempt."""
        return self._requeued(batch, self.ledger.retry(batch, failed_only=failed_only))

    def pause(self, batch: str) -> None:
        """Workers stop starting the batch's jobs (running ones finish) until ``resume``."""
        self.ledger.set_batch_state(batch, states.BATCH_PAUSED)

    def resume(self, batch: str) -> Requeued:
        """Resume a paused batch: its queued jobs are published again."""
        return self._requeued(batch, self.ledger.set_batch_state(batch, states.BATCH_ACTIVE))

    def _requeued(self, batch: str, job_ids: list[int]) -> Requeued:
        if self.config.scheduler == "fair":  # the dispatcher publishes them in fair order
            self.ledger.unpublish(job_ids)
            return Requeued(batch, job_ids, 0)
        messages = republish(self.ledger, self.publisher, job_ids, micro_batch=self.config.micro_batch) if job_ids else 0
        return Requeued(batch, job_ids, messages)

    # -- registries (models, adapters, embeddings, ControlNets) ------------------------------------------
    def check_entry(self, entry):
        """``entry`` as its file says (sha256, layout), refused when its name is taken or its file
        is of another family or arch (an s3:// source is fetched once). Nothing is registered."""
        from farm.intake.files import checked_entry

        what = _registry_kind(entry)
        catalog = self.catalog()
        known = {"model": catalog.models, "adapter": catalog.adapters, "embedding": catalog.embeddings,
                 "controlnet": catalog.controlnets, "motion": catalog.motion_adapters}[what]
        if entry.name in known:  # before hashing a large file (the ledger checks again as it writes)
            raise ConflictError(f"{what} {entry.name} is already registered (remove it first)")
        return checked_entry(entry, self.config)

    def register(self, entry, *, checked: bool = False):
        """Register a model, adapter, embedding or ControlNet entry (``farm.models.registry``'s
        ``model_entry`` and friends build one) after looking into its file (``check_entry``, unless
        ``checked``): a file of another family or arch is refused and nothing is registered.
        Returns the entry as recorded."""
        what = _registry_kind(entry)
        if not checked:
            entry = self.check_entry(entry)
        add = {"model": self.ledger.add_model, "adapter": self.ledger.add_adapter,
               "embedding": self.ledger.add_embedding, "controlnet": self.ledger.add_controlnet,
               "motion": self.ledger.add_motion_adapter}[what]
        add(entry)
        return entry

    def unregister(self, what: str, name: str) -> None:
        """Remove a registered model, adapter, embedding or ControlNet (``what``); jobs already
        recorded keep their record."""
        self.ledger.remove_registered(what, name)

    # -- the fleet ---------------------------------------------------------------------------------------
    def workers(self) -> list:
        """The workers the ledger knows, with their state, device and resident models."""
        return self.ledger.workers()

    def set_worker_state(self, name: str, state: str) -> None:
        """Drain (``draining``), cordon (``cordoned``) or uncordon (``active``) a worker."""
        self.ledger.set_worker_state(name, state)

    def model_queues(self, models: str | None = None) -> str:
        """The broker queues of ``models`` (comma-separated, preferred first; default every known
        model), as a worker's ``-Q`` takes them; an unknown model is an ``InputError``."""
        from farm.fleet.dispatch import model_queue

        known = self.catalog().models
        names = [m.strip() for m in models.split(",") if m.strip()] if models else sorted(known)
        unknown = [m for m in names if m not in known]
        if unknown:
            raise InputError("models", f"unknown model {unknown[0]!r} (see `farm models list`)")
        return ",".join(model_queue(self.config.queue, m) for m in names)

    @staticmethod
    def devices(devices: str | None, workers: int | None) -> list[str]:
        """The device list ``--devices``/``--workers`` name (one worker process each)."""
        return localfarm.parse_devices(devices, workers)

    def run_workers(self, devices: list[str], *, models: str | None = None, name_prefix: str = "farm") -> int:
        """Run workers in the foreground, one pinned process per device, restarted if one dies;
        returns when they stop (the exit status)."""
        from farm.models.names import check_name

        check_name("name-prefix", name_prefix)
        self.ledger  # noqa: B018 - migrate a fresh SQLite ledger once, before the workers race to
        queues = self.model_queues(models)
        broker = localfarm.ensure_redis(self.config)
        slots = localfarm.worker_slots(self.config, devices, broker, prefix=name_prefix,
                                       serve_all_models=models is None)
        print(f"starting {len(slots)} worker(s): {', '.join(s.name for s in slots)}", file=sys.stderr, flush=True)
        private_redis = self.config if localfarm.watches_private_redis(self.config, self.env) else None
        return localfarm.supervise(slots, queues=queues, private_redis=private_redis)

    def up(self, devices: list[str], *, models: str | None = None) -> dict:
        """Start the local farm in the background (a private Redis unless FARM_BROKER_URL, and
        workers); the broker's URL comes back without its password."""
        from farm.config import redact_url

        self.ledger  # noqa: B018
        self.model_queues(models)  # refuse unknown models here, not in the background
        info = localfarm.up(self.config, devices, models=models)
        info["broker"] = redact_url(info["broker"])  # a password never reaches the terminal or a log
        return info

    def down(self) -> dict:
        """Stop the local farm: workers finish their current job, then the private Redis stops."""
        return localfarm.down(self.config)

    def reap(self) -> dict:
        """Return jobs whose worker's lease lapsed to the queue (or fail them after max attempts)."""
        from farm.fleet.maintenance import reap

        return reap(self.ledger, self.publisher, max_attempts=self.config.max_attempts,
                    micro_batch=self.config.micro_batch)

    def reconcile(self, grace_s: float = 5.0) -> dict:
        """Publish queued jobs that no message in the broker carries (published over ``grace_s`` ago)."""
        from farm.fleet.maintenance import reconcile

        return reconcile(self.ledger, self.publisher, grace_s=grace_s, micro_batch=self.config.micro_batch)

    def backlog(self, models: list[str] | None = None) -> dict:
        """Per model (``models`` even at zero, else those with work): the jobs queued or rendering
        and their estimated GPU-seconds (``farm.fleet.scaling.Backlog``), the autoscaler's signal."""
        from farm.fleet.scaling import backlogs

        return backlogs(self.ledger.backlog_rows(models), models)

    def serving_workers(self, model: str) -> int:
        """Live workers (active, heartbeat recent) that consume ``model``'s queue."""
        from farm.fleet.scaling import live_serving

        return live_serving(self.ledger.workers(), model, datetime.now(timezone.utc))

    def desired_workers(self, model: str, drain_s: float | None = None, *, per_worker: float = 1.0,
                        minimum: int = 0, maximum: int | None = None, current: int | None = None,
                        hold: float | None = None) -> dict:
        """How many workers ``model``'s backlog asks for to drain within ``drain_s`` (default
        FARM_DRAIN_TARGET_S), from ``current`` (default: the live workers serving it) with
        ``farm.fleet.scaling.desired_workers``'s hysteresis. An unknown model is an ``InputError``."""
        from farm.fleet import scaling

        if model not in self.catalog().models:
            raise InputError("model", f"unknown model {model!r} (see `farm models list`)")
        drain_s = float(drain_s if drain_s is not None else self.config.drain_target_s)
        if drain_s <= 0 or per_worker <= 0:
            raise InputError("drain" if drain_s <= 0 else "per-worker", "must be more than zero")
        if maximum is not None and maximum < minimum:
            raise InputError("max", f"{maximum} is below --min {minimum}")
        backlog = self.backlog([model])[model]
        current = self.serving_workers(model) if current is None else current
        desired = scaling.desired_workers(backlog.gpu_s, drain_s=drain_s, per_worker=per_worker, minimum=minimum,
                                          maximum=maximum, current=current, jobs=backlog.jobs,
                                          hold=scaling.HOLD if hold is None else hold)
        drain_at = scaling.drain_time_s(backlog.gpu_s, desired, per_worker)
        return {"model": model, "jobs": backlog.jobs, "backlog_s": round(backlog.gpu_s, 3), "drain_s": drain_s,
                "per_worker": per_worker, "current": current, "desired": desired,
                "drain_at_desired_s": None if drain_at is None else round(drain_at, 3)}

    # -- the ledger's schema and records -------------------------------------------------------------------
    def schema(self, upgrade_to: str | None = None) -> dict:
        """The ledger's schema revision and the newest this farm knows; with ``upgrade_to``
        ("head" or a revision), apply the migrations first ({"ledger", "before", "after", "head"})."""
        from farm.ledger import Ledger
        from farm.ledger.ledger import current_revision, head_revision, upgrade

        ledger = Ledger(self.config.database_url, auto_migrate=False)
        try:
            before = current_revision(ledger.engine)
            if upgrade_to is not None:
                upgrade(ledger.engine, upgrade_to)
            return {"ledger": ledger.safe_url, "before": before, "after": current_revision(ledger.engine),
                    "head": head_revision()}
        finally:
            ledger.close()

    def attempts(self, since: datetime) -> list[dict]:
        """Every attempt that ended since ``since``, with its stage timings (what ``farm stats`` sums)."""
        return [attempt.as_dict() for attempt in self.ledger.attempt_rows(since)]

    def image_url(self, job: int, expires_s: int) -> str:
        """A GET-only presigned URL for a job's image (s3:// stores)."""
        from farm.errors import NotFound
        from farm.storage import open_store

        [view] = self.ledger.list_jobs(job_id=job) or [None]
        if view is None:
            raise NotFound(f"no job {job}")
        if view.artifact is None:
            raise InputError("job", f"job {job} has no stored image (state {view.state})")
        store = open_store(view.artifact.store_url, s3_endpoint_url=self.config.s3_endpoint_url)
        if not hasattr(store, "presigned_get"):
            raise InputError("store", f"{view.artifact.store_url} is a local store; presigned URLs need an s3:// store")
        return store.presigned_get(view.artifact.key, expires_s)

    # -- sharing the farm: tenants and API keys (issue 23) ------------------------------------------------
    def secret(self) -> bytes:
        """The server secret API keys are hashed with: FARM_SECRET_KEY, the file FARM_SECRET_KEY_FILE
        names, or ``<home>/secret.key`` (made on first use, readable by its owner only). `farm keys
        create` and `farm serve` must share it."""
        if self._secret is None:
            self._secret = self._read_secret()
        return self._secret

    def _read_secret(self) -> bytes:
        if self.config.secret_key:
            return self.config.secret_key.encode()
        path = self.config.secret_key_file or self.config.home / "secret.key"
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            if self.config.secret_key_file is not None:
                raise InputError("FARM_SECRET_KEY_FILE", f"{path}: no such file") from None
        import secrets as random_secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            time.sleep(0.05)
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as handle:
            handle.write(random_secrets.token_hex(32).encode())
        return path.read_bytes().strip()

    def create_key(self, tenant: str, scopes: str, *, expires: str | None = None, label: str = "") -> dict:
        """A new API key for ``tenant`` (made if new) with ``scopes`` ("submit,read[,admin]"),
        expiring after ``expires`` ("30d", "12h"; None: never). The key is in the answer once and
        nowhere else: the ledger keeps its HMAC."""
        from farm.models.names import check_name
        from farm.tenancy.keys import new_key, parse_expiry, parse_scopes

        tenant = check_name("tenant", tenant)
        wanted = parse_scopes(scopes)
        expires_at = parse_expiry(expires, datetime.now(timezone.utc))
        if len(label) > 128:
            raise InputError("label", "at most 128 characters")
        made = new_key(self.secret())
        info = self.ledger.add_key(prefix=made.prefix, key_hash=made.key_hash, tenant=tenant, scopes=wanted,
                                   label=label, expires_at=expires_at)
        return {"key": made.key, **info.as_dict()}

    def keys(self, tenant: str | None = None) -> list[dict]:
        """Every key (or ``tenant``'s), without the keys themselves."""
        return [k.as_dict() for k in self.ledger.keys(tenant)]

    def revoke_key(self, prefix: str) -> dict:
        """Revoke a key by its prefix (``farm_<prefix>_...``): it stops working at once."""
        return self.ledger.revoke_key(prefix).as_dict()

    def authenticate(self, key: str):
        """The ``farm.tenancy.keys.Principal`` a key stands for, or None for a key that is unknown,
        wrong, revoked or expired (the caller answers all of them alike)."""
        from farm.tenancy.keys import Principal, key_prefix, matches

        prefix = key_prefix(key)
        info = self.ledger.key(prefix) if prefix else None
        if info is None or not matches(self.secret(), key, info.key_hash) or info.revoked_at is not None:
            return None
        now = datetime.now(timezone.utc)
        if info.expires_at is not None and info.expires_at <= now:
            return None
        touched = self._touched.get(prefix, 0.0)
        if time.monotonic() - touched >= KEY_TOUCH_S:  # a key's last use is written once a minute, not per request
            self._touched[prefix] = time.monotonic()
            self.ledger.touch_key(prefix, now)
        return Principal(info.tenant, frozenset(info.scopes), info.prefix)

    def set_tenant(self, tenant: str, *, s3_prefixes: list[str] | None = None, weight: float | None = None,
                   quotas: dict | None = None) -> dict:
        """Make or change a tenant. ``s3_prefixes``: the s3://bucket/prefix/ it may name;
        ``weight``: its share of the fleet under fair share (issue 24; default 1); ``quotas``:
        changes to its quotas (farm.tenancy.quotas.LIMITS; a value None removes that quota)."""
        from farm.models.names import check_name
        from farm.tenancy.quotas import check_limits

        tenant = check_name("tenant", tenant)
        import re

        for prefix in s3_prefixes or ():
            if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/[^\s]*)?", prefix) or ".." in prefix.split("/"):
                raise InputError("s3_prefix", f"{prefix!r}: expected s3://bucket/ or s3://bucket/prefix/")
        if weight is not None and not (0.01 <= weight <= 1000):
            raise InputError("weight", f"expected a weight from 0.01 to 1000, got {weight:g}")
        merged = None
        if quotas is not None:
            current = self.ledger.tenant(tenant)
            merged = dict((current.quotas if current else None) or {})
            merged.update(quotas)
            try:
                merged = check_limits({k: v for k, v in merged.items() if v is not None})
            except ValueError as exc:
                raise InputError("quota", str(exc)) from None
        return self.ledger.set_tenant(tenant, s3_prefixes=s3_prefixes, weight=weight, quotas=merged).as_dict()

    def tenant(self, tenant: str) -> dict:
        """A tenant's settings, its keys (never the keys themselves), and what counts against its
        quotas now, with what is left of each."""
        from farm.errors import NotFound

        info = self.ledger.tenant(tenant)
        if info is None:
            raise NotFound(f"no tenant {tenant!r}")
        return {**info.as_dict(), "keys": self.keys(tenant), **self._usage(tenant, info.quotas)}

    def usage(self, tenant: str) -> dict:
        """``tenant``'s weight and quotas, what counts against them now (the last 24 hours), and
        what is left."""
        info = self.ledger.tenant(tenant)
        quotas = (info.quotas if info else None) or {}
        return {"tenant": tenant, "weight": info.weight if info else 1.0, "quotas": quotas,
                **self._usage(tenant, quotas)}

    def _usage(self, tenant: str, quotas: dict | None) -> dict:
        used = self.ledger.tenant_usage(tenant)
        quotas = quotas or {}
        usage = {"images_today": used.images_today, "gpu_seconds_today": round(used.gpu_seconds_today, 1),
                 "queued": used.queued}
        left = {}
        for name, value in (("images_per_day", used.images_today), ("gpu_seconds_per_day", used.gpu_seconds_today),
                            ("max_queued", used.queued)):
            if name in quotas:
                left[name] = max(0, round(quotas[name] - value, 1))
        return {"usage": usage, "left": left}

    def tenant_costs(self, since: datetime, until: datetime | None = None) -> list[dict]:
        """Per tenant: images, GPU-seconds, failures and bytes stored over a time range (issue 24)."""
        return self.ledger.tenant_costs(since, until)

    def dispatch(self, stop, *, holder: str | None = None) -> None:
        """Run the fair-share dispatcher until ``stop`` (a threading.Event) is set: this process
        publishes while it holds the ledger's dispatch lock, and stands by while another does."""
        import socket

        from farm.fleet.dispatcher import Dispatcher

        name = holder or f"dispatch-{os.getpid()}@{socket.gethostname()}"
        Dispatcher(self.ledger, self.publisher, self.config, holder=name).run(stop)

    # -- webhooks (issue 25) -------------------------------------------------------------------------
    def add_webhook(self, url: str, *, tenant: str = "local", events: str | list[str] | None = None,
                    batch: str | None = None) -> dict:
        """A webhook endpoint for ``tenant``'s events (``events``: types, comma-separated; all by
        default; ``batch``: one batch's only). The answer holds its signing secret, once. A URL
        that resolves to a loopback or private address is refused unless the operator allowed
        that network (FARM_WEBHOOK_ALLOWED_NETS)."""
        from farm.fleet.outbound import check_url, parse_nets
        from farm.jobs.events import parse_types
        from farm.models.names import check_name

        tenant = check_name("tenant", tenant)
        if len(url) > 2000:
            raise InputError("url", "at most 2000 characters")
        kinds = parse_types(events)
        check_url(url, parse_nets(",".join(self.config.webhook_allowed_nets)))
        if batch is not None:
            from farm.errors import NotFound

            try:
                owner = self.ledger.get_batch(batch).tenant
            except NotFound:
                owner = None
            if owner != tenant:  # another tenant's batch is an unknown one
                raise NotFound(f"no batch {batch!r}")
        endpoint, secret = self.ledger.add_webhook(tenant=tenant, url=url, kinds=kinds, batch=batch)
        return {**endpoint.as_dict(), "secret": secret}

    def webhooks(self, tenant: str | None = None) -> list[dict]:
        return [w.as_dict() for w in self.ledger.webhooks(tenant)]

    def remove_webhook(self, endpoint_id: int, tenant: str | None = None) -> dict:
        self.ledger.remove_webhook(endpoint_id, tenant)
        return {"removed": endpoint_id}

    def webhook_deliveries(self, endpoint_id: int | None = None, *, tenant: str | None = None,
                           failed: bool = False, limit: int = 100) -> list[dict]:
        """Delivery attempts, newest first: when, which event, the receiver's answer or the error."""
        if endpoint_id is not None:
            self.ledger.webhook(endpoint_id, tenant)
        return [d.as_dict() for d in self.ledger.deliveries(endpoint_id, tenant=tenant, failed=failed, limit=limit)]
