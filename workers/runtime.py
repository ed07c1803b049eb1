"""What a worker process holds while it runs: ledger, store, renderer, handler, heartbeat.

Built once when the Celery worker starts (``worker_init``), in the process that renders, so torch
and CUDA are initialised after any fork, never before. A background thread sends heartbeats, runs
fleet maintenance when this worker holds the lease, follows newly registered models, lifts model
quarantines, and notices a remote drain (`farm workers drain NAME`).

Stopping: the first SIGTERM (or a drain) takes no new job and lets the current micro-batch finish
within FARM_STOP_GRACE_S (0: it stops at its next step and goes back to the queue); the worker then
stores what it rendered and exits 0. A second signal hands back what is running and exits at once.

Ready (``/readyz`` on the metrics port, for a Kubernetes readiness probe): the pipelines of the
served models are loaded (FARM_PRELOAD=1), the consumer runs, and the worker is not draining.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from celery import signals

from engine.versions import library_versions
from farm.config import Config, load_config
from farm.fleet.dispatch import model_queue
from farm.ledger import Ledger
from farm.storage import open_store
from workers.settings import WorkerSettings

log = logging.getLogger("farm.worker")
HEARTBEAT_S = 10.0


@dataclass
class Runtime:
    config: Config
    settings: WorkerSettings
    name: str
    device: str
    ledger: Ledger
    handler: object
    runner: object
    stop: threading.Event
    draining: threading.Event
    consumer: object = None  # the Celery consumer, to reorder the queues it polls
    quarantined: dict = field(default_factory=dict)  # model -> monotonic time it may come back
    cordoned: bool = False
    signals_seen: int = 0
    ready: threading.Event = field(default_factory=threading.Event)  # warm and consuming


_runtime: Runtime | None = None


def make_renderer(config: Config, settings: WorkerSettings, ledger: Ledger):
    """(renderer, GPU name): the diffusion runner, or the sleep renderer for fault tests and queue
    benchmarks (which never loads torch)."""
    if config.renderer.startswith("sleep"):
        from engine.sleeper import SleepRenderer

        return SleepRenderer(float(config.renderer.partition(":")[2] or 0)), None
    import torch

    from engine.quiet import quiet_libraries
    from engine.runner import Runner

    quiet_libraries()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    torch_device = "cuda" if settings.device.startswith("cuda") else "cpu"
    gpu_name = torch.cuda.get_device_name(0) if torch_device == "cuda" else None
    runner = Runner(device=torch_device, model_cache=config.model_cache, max_models=config.max_resident_models,
                    bucket=config.batch_bucket, catalog=ledger.catalog, s3_endpoint_url=config.s3_endpoint_url,
                    fuse=config.fuse_accelerator, max_adapters=config.max_adapters,
                    max_adapter_bytes=config.max_adapter_mb << 20, host_lora_bytes=config.host_lora_mb << 20,
                    compile=config.compile_unet, preview_decoders=dict(config.preview_decoders),
                    dtype=config.dtype, offload=settings.offload, vae_tiling=settings.vae_tiling,
                    store_url=config.store_url)  # issue 13: where the jobs' input images are
    return runner, gpu_name


def build(config: Config, settings: WorkerSettings) -> Runtime:
    from engine.imaging import warm_up as warm_up_encoding
    from farm.fleet.dispatch import Publisher
    from farm.fleet.localfarm import broker_url_for
    from workers.handler import Handler

    ledger = Ledger(config.database_url)
    store = open_store(config.store_url, s3_endpoint_url=config.s3_endpoint_url)
    name, device = settings.name, settings.device
    renderer, gpu_name = make_renderer(config, settings, ledger)
    if settings.preload:
        preload(renderer, settings, config)
    warm_up_encoding()  # registered below as active: ready for its first image
    versions = library_versions()
    prefix = f"{config.queue}."
    served = ["*"] if settings.serve_all_models else [q[len(prefix):] for q in settings.queues
                                                      if q.startswith(prefix) and not q.startswith(prefix + "@")]
    ledger.register_worker(name=name, host=socket.gethostname(), pid=os.getpid(), device=device,
                           gpu_name=gpu_name, versions=versions, models=served or ["*"])
    draining = threading.Event()
    runtime_ref: dict = {}
    metrics = None
    if settings.metrics_port:
        from workers.metrics import WorkerMetrics

        metrics = WorkerMetrics(name)
        metrics.watch_sql(ledger.sql_counts)
        metrics.watch_backlog(lambda: backlog_signals(ledger, config, served))
        metrics.serve(settings.metrics_port, settings.metrics_addr,
                      ready=lambda: "runtime" in runtime_ref and is_ready(runtime_ref["runtime"]))
        log.info("metrics on %s:%s", settings.metrics_addr, settings.metrics_port)
    handler = Handler(ledger=ledger, store=store, runner=renderer, worker=name, device=device, versions=versions,
                      lease_s=config.lease_s, time_limit_s=config.job_time_limit, max_attempts=config.max_attempts,
                      retry_backoff_s=config.retry_backoff_s, publisher=Publisher(config, broker_url_for(config)),
                      micro_batch=config.micro_batch, draining=draining,
                      on_quarantine=lambda model: quarantine(runtime_ref["runtime"], model), metrics=metrics,
                      io_threads=config.io_threads, store_overlap=config.store_overlap)
    runtime = Runtime(config, settings, name, device, ledger, handler, renderer, threading.Event(), draining)
    runtime_ref["runtime"] = runtime
    threading.Thread(target=_background, args=(runtime,), name="farm-heartbeat", daemon=True).start()
    if config.scheduler == "fair":  # every worker stands by to dispatch; the lock's holder does
        from farm.fleet.dispatcher import Dispatcher

        dispatcher = Dispatcher(ledger, Publisher(config, broker_url_for(config)), config, holder=name)
        threading.Thread(target=dispatcher.run, args=(runtime.stop,), name="farm-dispatch", daemon=True).start()
    return runtime


def backlog_signals(ledger, config: Config, served: list[str]) -> list:
    """The scaling signal this worker's metrics report: every model with a backlog, and its own."""
    from farm.fleet import scaling

    return scaling.signals(ledger.backlog_rows(), ledger.workers(), ledger.clock(), drain_s=config.drain_target_s,
                           models=[m for m in served if m != "*"])


def preload(renderer, settings: WorkerSettings, config: Config) -> None:
    """Load the pipelines of the models this worker serves (as many as stay resident) before it
    takes work, so its first micro-batch pays no load and its readiness means warm. A model that
    fails to load is logged, not fatal: its jobs fail or retry as they would have anyway."""
    pipeline = getattr(renderer, "pipeline", None)
    prefix = f"{config.queue}."
    models = [q[len(prefix):] for q in settings.queues if q.startswith(prefix)]
    if pipeline is None or settings.serve_all_models:
        return  # the sleep renderer has nothing to load; a worker of every model has no short list
    for model in models[:config.max_resident_models]:
        try:
            _, load_ms = pipeline(model)
            log.info("preloaded %s in %.0f ms", model, load_ms)
        except Exception as exc:  # noqa: BLE001 - see above
            log.error("could not preload %s: %s", model, exc)


def is_ready(runtime: Runtime) -> bool:
    """Warm (built, models preloaded), consuming, and not draining: a pod to count on."""
    return runtime.ready.is_set() and not runtime.draining.is_set()


# -- queues ------------------------------------------------------------------------------------
def _control(runtime: Runtime, command: str, queue: str) -> None:
    """Ask this worker's own consumer (through Celery's remote control, so the consumer thread
    applies it) to start or stop consuming a queue."""
    from workers.app import app

    getattr(app.control, command)(queue, destination=[runtime.name], reply=False)


def quarantine(runtime: Runtime, model: str) -> None:
    """Keep away from a model this worker keeps failing: stop consuming its queue for a while."""
    runtime.quarantined[model] = time.monotonic() + runtime.config.quarantine_s
    _control(runtime, "cancel_consumer", model_queue(runtime.config.queue, model))
    log.warning("quarantined model %s for %ss after repeated failures", model, runtime.config.quarantine_s)
    runtime.ledger.heartbeat(runtime.name, error=f"quarantined model {model} after repeated failures")


def lift_quarantines(runtime: Runtime) -> None:
    for model, until in list(runtime.quarantined.items()):
        if time.monotonic() >= until:
            del runtime.quarantined[model]
            _control(runtime, "add_consumer", model_queue(runtime.config.queue, model))
            log.info("model %s is out of quarantine", model)


def prefer_resident_models(runtime: Runtime) -> None:
    """Poll the queues of the models this worker holds first.

    With the broker's "priority" queue order, kombu's Redis channel BRPOPs its queues in the order
    of its queue cycle; putting resident models first means a worker drains work it can render
    without a model switch before it takes a micro-batch that would evict something. Message
    priorities still come first (each priority level is polled across all queues).
    """
    from farm.fleet.dispatch import preferred_queue_order

    channel = getattr(getattr(runtime.consumer, "task_consumer", None), "channel", None)
    cycle = getattr(channel, "_queue_cycle", None)
    items = getattr(cycle, "items", None)
    if not isinstance(items, list) or len(items) < 2:
        return
    items[:] = preferred_queue_order(items, runtime.config.queue, runtime.runner.resident_models())


def follow_new_models(runtime: Runtime, serving: set[str]) -> set[str]:
    """A worker that serves every model starts consuming the queue of each newly registered one."""
    wanted = {model_queue(runtime.config.queue, m) for m in runtime.ledger.catalog().models}
    for queue in sorted(wanted - serving):
        _control(runtime, "add_consumer", queue)
        log.info("now consuming %s", queue)
    return serving | wanted


def set_cordoned(runtime: Runtime, cordoned: bool, serving: set[str]) -> None:
    """Cordoned: stop taking messages (what runs finishes) until uncordoned; the worker stays up."""
    for queue in sorted(serving):
        _control(runtime, "cancel_consumer" if cordoned else "add_consumer", queue)
    runtime.cordoned = cordoned
    log.warning("cordoned: taking no new work" if cordoned else "uncordoned: taking work again")


# -- stopping ----------------------------------------------------------------------------------
def drain(runtime: Runtime, why: str, grace_s: float = 0.0) -> None:
    """Take no new job; the current micro-batch finishes if it can within ``grace_s`` seconds,
    else it stops at its next step after that and goes back to the queue."""
    if runtime.draining.is_set():
        return
    runtime.handler.finish_by(grace_s)  # sets runtime.draining, the handler's own event
    log.warning("draining (%s)%s", why, f": the current micro-batch may finish within {grace_s:g}s" if grace_s else "")
    try:
        runtime.ledger.heartbeat(runtime.name, state="draining")
    except Exception:  # noqa: BLE001
        pass


# -- liveness ----------------------------------------------------------------------------------
STUCK_AFTER_S = 45.0


def consumer_is_stuck(runtime: Runtime, publisher, serving: set[str]) -> bool:
    """Work waits in this worker's queues, yet it has taken nothing for a while and renders nothing.

    A Celery consumer whose broker connection went half-open can stop consuming for good (it
    timed out mid-ack and never resubscribed). A healthy idle worker with prefetch 1 always has a
    BRPOP outstanding, so waiting messages would reach it at once.
    """
    handler = runtime.handler
    if runtime.draining.is_set() or handler.current or time.monotonic() - handler.last_activity < STUCK_AFTER_S:
        return False
    return publisher.waiting(sorted(serving)) > 0


# -- the background thread ---------------------------------------------------------------------
def _background(runtime: Runtime) -> None:
    """Heartbeats, fleet maintenance (when this worker holds the lease), new models, quarantines,
    remote drains."""
    from farm.fleet import maintenance
    from farm.fleet.dispatch import Publisher
    from farm.fleet.localfarm import broker_url_for

    config = runtime.config
    publisher = None
    serve_all = runtime.settings.serve_all_models
    serving: set[str] = set(runtime.settings.queues)
    interval = min(HEARTBEAT_S, config.maintenance_s)
    heartbeat_s = min(HEARTBEAT_S, config.maintenance_s * 2)
    last_beat = 0.0
    while not runtime.stop.wait(interval):
        try:
            if time.monotonic() - last_beat >= heartbeat_s:
                runtime.handler.report_status()
                last_beat = time.monotonic()
            state = runtime.ledger.worker_state(runtime.name)
            if state in ("cordoned", "active") and (state == "cordoned") != runtime.cordoned and runtime.consumer:
                set_cordoned(runtime, state == "cordoned", serving)
            if not runtime.draining.is_set() and state == "draining":
                drain(runtime, "farm workers drain")
                from workers.app import app

                app.control.shutdown(destination=[runtime.name])  # warm: after the current message
            publisher = publisher or Publisher(config, broker_url_for(config))
            done = maintenance.tick(runtime.ledger, publisher, config, holder=runtime.name)
            if done and any(done.values()):
                log.info("maintenance: %s", done)
            if runtime.consumer is not None:
                lift_quarantines(runtime)
                if serve_all:
                    serving = follow_new_models(runtime, serving)
                held_off = {model_queue(config.queue, m) for m in runtime.quarantined}
                if consumer_is_stuck(runtime, publisher, serving - held_off):
                    log.error("messages are waiting but this worker has consumed nothing for %ss: its broker "
                              "connection is wedged; exiting so it is restarted with a fresh one", STUCK_AFTER_S)
                    os._exit(75)
        except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the worker
            log.warning("heartbeat/maintenance failed: %s", exc)


def current() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = build(load_config(), settings())
    return _runtime


_settings: WorkerSettings | None = None


def settings() -> WorkerSettings:
    """This process's settings, read from its environment once."""
    global _settings
    if _settings is None:
        _settings = WorkerSettings.from_env()
    return _settings


@signals.setup_logging.connect
def _on_setup_logging(loglevel=None, **_kwargs) -> None:
    """Connected, so Celery leaves logging to us: one format for the farm's and Celery's lines."""
    from workers.logs import configure

    configure(settings().name, settings().log_format, level=loglevel or "INFO")


@signals.worker_init.connect
def _on_worker_init(**_kwargs) -> None:
    current()  # load torch, register in the ledger, start heartbeats before consuming


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    runtime = current()
    runtime.consumer = sender
    runtime.ready.set()


@signals.worker_shutting_down.connect
def _on_shutting_down(sig=None, how=None, **_kwargs) -> None:
    if _runtime is None:
        return
    _runtime.signals_seen += 1
    if _runtime.signals_seen == 1 and how != "Cold":
        drain(_runtime, f"signal {sig}", _runtime.settings.stop_grace_s)
        return
    # a second signal (or a cold shutdown): hand back what is running and leave now
    try:
        _runtime.handler.requeue_current(f"worker stopped at once ({sig})")
        _runtime.ledger.heartbeat(_runtime.name, state="stopped", current_job=None)
    finally:
        os._exit(1)


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_kwargs) -> None:
    if _runtime is not None:
        _runtime.stop.set()
        try:
            _runtime.handler.close()
            _runtime.handler.report_status()
            _runtime.ledger.heartbeat(_runtime.name, state="stopped", current_job=None)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the shutdown: %s", exc)
