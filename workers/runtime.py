"""What a worker process holds while it runs: ledger, store, runner, handler, heartbeat.

Built once when the Celery worker starts (``worker_init``), in the process that renders, so torch
and CUDA are initialised after any fork, never before.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from celery import signals

from farm.config import Config, load_config
from farm.ledger import Ledger
from farm.storage import open_store

log = logging.getLogger("farm.worker")
HEARTBEAT_S = 10.0


@dataclass
class Runtime:
    config: Config
    name: str
    device: str
    ledger: Ledger
    handler: object
    runner: object
    stop: threading.Event
    consumer: object = None  # the Celery consumer, to reorder the queues it polls


def prefer_resident_models(runtime: Runtime) -> None:
    """Poll the queues of the models this worker holds first.

    With the broker's "priority" queue order, kombu's Redis channel BRPOPs its queues in the order
    of its queue cycle; putting resident models first means a worker drains work it can render
    without a model switch before it takes a micro-batch that would evict something. Message
    priorities still come first (each priority level is polled across all queues).
    """
    from farm.dispatch import preferred_queue_order

    channel = getattr(getattr(runtime.consumer, "task_consumer", None), "channel", None)
    cycle = getattr(channel, "_queue_cycle", None)
    items = getattr(cycle, "items", None)
    if not isinstance(items, list) or len(items) < 2:
        return
    items[:] = preferred_queue_order(items, runtime.config.queue, runtime.runner.resident_models())


_runtime: Runtime | None = None


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "diffusers", "transformers", "peft"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def build(config: Config, name: str, device: str) -> Runtime:
    import torch

    from workers.handler import Handler
    from workers.quiet import quiet_libraries
    from workers.runner import Runner

    quiet_libraries()
    threads = int(os.environ.get("FARM_TORCH_THREADS") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    torch_device = "cuda" if device.startswith("cuda") else "cpu"
    gpu_name = torch.cuda.get_device_name(0) if torch_device == "cuda" else None
    ledger = Ledger(config.database_url)
    store = open_store(config.store_url, s3_endpoint_url=config.s3_endpoint_url)
    runner = Runner(device=torch_device, model_cache=config.model_cache, max_models=config.max_resident_models,
                    bucket=config.batch_bucket, catalog=ledger.catalog, s3_endpoint_url=config.s3_endpoint_url,
                    fuse=config.fuse_accelerator, max_adapters=config.max_adapters,
                    max_adapter_bytes=config.max_adapter_mb << 20, host_lora_bytes=config.host_lora_mb << 20)
    versions = library_versions()
    ledger.register_worker(name=name, host=socket.gethostname(), pid=os.getpid(), device=device,
                           gpu_name=gpu_name, versions=versions)
    handler = Handler(ledger=ledger, store=store, runner=runner, worker=name, device=device,
                      versions=versions, lease_s=config.job_time_limit)
    stop = threading.Event()
    runtime = Runtime(config, name, device, ledger, handler, runner, stop)
    threading.Thread(target=_heartbeat, args=(runtime,), name="farm-heartbeat", daemon=True).start()
    return runtime


def follow_new_models(runtime: Runtime, app, serving: set[str]) -> set[str]:
    """A worker that serves every model starts consuming the queue of each newly registered one.
    The request goes through Celery's remote control, so the consumer thread applies it."""
    from farm.dispatch import model_queue

    wanted = {model_queue(runtime.config.queue, m) for m in runtime.ledger.catalog().models}
    for queue in sorted(wanted - serving):
        app.control.add_consumer(queue, destination=[runtime.name], reply=False)
        log.info("now consuming %s", queue)
    return serving | wanted


def _heartbeat(runtime: Runtime) -> None:
    """Heartbeats, and fleet maintenance when this worker holds the lease for it."""
    from farm import maintenance
    from farm.dispatch import Publisher
    from farm.localfarm import broker_url_for

    config = runtime.config
    publisher = None
    serve_all = os.environ.get("FARM_SERVE_ALL_MODELS") == "1"
    serving: set[str] = set(os.environ.get("FARM_QUEUES", "").split(",")) - {""}
    interval = min(HEARTBEAT_S, config.maintenance_s)
    last_beat = 0.0
    while not runtime.stop.wait(interval):
        try:
            if time.monotonic() - last_beat >= HEARTBEAT_S:
                runtime.ledger.heartbeat(runtime.name, resident_models=runtime.runner.resident_models(),
                                         resident_adapters=runtime.runner.resident_adapters())
                last_beat = time.monotonic()
            publisher = publisher or Publisher(config, broker_url_for(config))
            done = maintenance.tick(runtime.ledger, publisher, holder=runtime.name, period_s=config.maintenance_s,
                                    aging_s=config.aging_s, micro_batch=config.micro_batch)
            if done and any(done.values()):
                log.info("maintenance: %s", done)
            if serve_all and runtime.consumer is not None:
                from workers.app import app

                serving = follow_new_models(runtime, app, serving)
        except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the worker
            log.warning("heartbeat/maintenance failed: %s", exc)


def current() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = build(load_config(), worker_name(), os.environ.get("FARM_DEVICE", "cpu"))
    return _runtime


def worker_name() -> str:
    return os.environ.get("FARM_WORKER_NAME") or f"farm-{os.getpid()}@{socket.gethostname()}"


@signals.worker_init.connect
def _on_worker_init(**_kwargs) -> None:
    current()  # load torch, register in the ledger, start heartbeats before consuming


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    current().consumer = sender


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_kwargs) -> None:
    if _runtime is not None:
        _runtime.stop.set()
        try:
            _runtime.handler.close()
            _runtime.ledger.heartbeat(_runtime.name, state="stopped", current_job=None)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the shutdown: %s", exc)
