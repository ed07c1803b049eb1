"""Prometheus metrics of one worker process (prometheus-client), served on FARM_METRICS_PORT.

Jobs by outcome, stage durations, micro-batch sizes, what is resident, GPU memory in use, and the
fleet's scaling signal (each model's backlog and desired workers, issue 26). The same
port answers ``/readyz`` (200 once the worker is warm and consuming, 503 before and while it
drains) for a Kubernetes readiness probe: one port per worker to open, not two.
"""

from __future__ import annotations

import logging
import threading
import time
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger("farm.worker")

STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    def __init__(self, worker: str):
        self.registry = CollectorRegistry()
        labels = {"worker": worker}
        self.jobs = Counter("farm_jobs_total", "Jobs finished by this worker, by outcome", ["worker", "outcome"],
                            registry=self.registry)
        self.stage = Histogram("farm_stage_seconds", "Time per image in each stage", ["worker", "stage"],
                               buckets=STAGE_BUCKETS, registry=self.registry)
        self.batch = Histogram("farm_micro_batch_size", "Images per pipeline call", ["worker"],
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.resident_models = Gauge("farm_resident_models", "Pipelines held in memory", ["worker"],
                                     registry=self.registry)
        self.resident_adapters = Gauge("farm_resident_adapters", "LoRAs loaded into resident pipelines", ["worker"],
                                       registry=self.registry)
        self.gpu_memory = Gauge("farm_gpu_memory_bytes", "CUDA memory allocated by this process", ["worker"],
                                registry=self.registry)
        self.labels = labels
        self._sql = None

    def watch_sql(self, counts) -> None:
        """Serve the ledger's statement and transaction counts (farm.ledger.schema.SqlCounts)."""
        from prometheus_client.core import CounterMetricFamily

        worker = self.labels["worker"]

        class SqlCollector:
            def collect(self):
                for name, value, what in (("farm_sql_statements", counts.statements, "statements"),
                                          ("farm_sql_transactions", counts.transactions, "transactions")):
                    family = CounterMetricFamily(name, f"SQL {what} this worker sent to the ledger", labels=["worker"])
                    family.add_metric([worker], value)
                    yield family

        self._sql = SqlCollector()
        self.registry.register(self._sql)

    def watch_backlog(self, read: Callable[[], list], ttl_s: float = 10.0,
                      clock: Callable[[], float] = time.monotonic) -> None:
        """Serve the fleet's scaling signal (issue 26) per model: backlog in estimated GPU-seconds,
        its jobs, the live workers serving it and the count it asks for. ``read()`` gives
        ``farm.fleet.scaling.Signal``s; it reads the ledger, so a scrape reuses its answer for
        ``ttl_s`` (every worker reports the same fleet-wide numbers: take ``max by (model)``). A
        ledger that cannot be read leaves the gauges out of that scrape, and the worker alone."""
        from prometheus_client.core import GaugeMetricFamily

        cache: dict = {}

        def current() -> list:
            if "at" not in cache or clock() - cache["at"] >= ttl_s:
                try:
                    cache["signals"] = read()
                except Exception:  # noqa: BLE001 - metrics never take a worker down
                    log.warning("metrics: cannot read the backlog", exc_info=True)
                    cache["signals"] = []
                cache["at"] = clock()
            return cache["signals"]

        class BacklogCollector:
            def collect(self):
                gauges = (("farm_backlog_gpu_seconds", "Estimated GPU-seconds of the jobs queued or rendering", "gpu_s"),
                          ("farm_backlog_jobs", "Jobs queued (in active batches) or rendering", "jobs"),
                          ("farm_serving_workers", "Live active workers consuming the model's queue", "current"),
                          ("farm_desired_workers", "Workers the backlog asks for to drain within FARM_DRAIN_TARGET_S",
                           "desired"))
                signals = current()
                for name, what, attribute in gauges:
                    family = GaugeMetricFamily(name, what, labels=["model"])
                    for signal in signals:
                        family.add_metric([signal.model], float(getattr(signal, attribute)))
                    yield family

        self.registry.register(BacklogCollector())

    def serve(self, port: int, addr: str = "127.0.0.1", ready: Callable[[], bool] | None = None) -> None:
        """Serve /metrics (any path but /readyz, as prometheus-client does) and /readyz."""
        server = make_server(addr, port, readiness_app(make_wsgi_app(self.registry), ready or (lambda: True)),
                             _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="farm-metrics", daemon=True).start()

    def observe(self, outcomes: dict, timings: dict | None, batch_size: int | None) -> None:
        worker = self.labels["worker"]
        for outcome, count in outcomes.items():
            if count:
                self.jobs.labels(worker=worker, outcome=outcome).inc(count)
        for name, ms in (timings or {}).items():
            if ms is not None and name.endswith("_ms"):
                self.stage.labels(worker=worker, stage=name[:-3]).observe(ms / 1000)
        if batch_size:
            self.batch.labels(worker=worker).observe(batch_size)

    def resident(self, models: int, adapters: int) -> None:
        worker = self.labels["worker"]
        self.resident_models.labels(worker=worker).set(models)
        self.resident_adapters.labels(worker=worker).set(adapters)
        try:
            import sys

            torch = sys.modules.get("torch")  # only if this worker renders with torch already
            if torch is not None and torch.cuda.is_available():
                self.gpu_memory.labels(worker=worker).set(torch.cuda.memory_allocated())
        except Exception:  # noqa: BLE001 - metrics never take a worker down
            pass


def readiness_app(metrics_app, ready: Callable[[], bool]):
    """A WSGI app: ``/readyz`` answers whether ``ready()``, every other path the metrics."""
    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/readyz":
            return metrics_app(environ, start_response)
        try:
            ok = bool(ready())
        except Exception:  # noqa: BLE001 - a probe that cannot tell says not ready
            ok = False
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"ready\n" if ok else b"not ready\n"]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in flight never holds the worker's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args) -> None:  # every probe and scrape would be a log line
        pass
