"""The Celery side of the farm: one app configuration shared by the producer and the workers,
and publishing micro-batches of job ids.

Messages carry job ids only (never specs, paths or images): the ledger is the source of truth
and Redis is transport. JSON is the only serializer; there is no result backend.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable

from farm.config import Config
from farm.errors import InfrastructureError
from farm.jobs.states import MAX_PRIORITY

RENDER_TASK = "farm.render"


def model_queue(base: str, model: str) -> str:
    """Jobs go to the queue of their model, so a worker serves exactly the models it is set up for."""
    return f"{base}.{model}"


def preferred_queue_order(queues: list[str], base: str, resident_models: list[str]) -> list[str]:
    """The queues of resident models first (most recently used first), the rest in their order."""
    resident = [model_queue(base, m) for m in reversed(resident_models)]
    first = [q for q in resident if q in queues]
    return first + [q for q in queues if q not in first]


def broker_priority(priority: int) -> int:
    """Redis treats 0 as the most urgent; the farm's priorities grow with urgency (0..9)."""
    return MAX_PRIORITY - max(0, min(MAX_PRIORITY, priority))


def tls_settings(cfg: Config, broker_url: str) -> dict | None:
    """For rediss:// brokers: verify the server against FARM_REDIS_CA_FILE (or the system CAs),
    with an optional client certificate."""
    if not broker_url.startswith("rediss://"):
        return None
    import ssl

    settings = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if cfg.redis_tls.get("ca"):
        settings["ssl_ca_certs"] = cfg.redis_tls["ca"]
    if cfg.redis_tls.get("cert"):
        settings["ssl_certfile"] = cfg.redis_tls["cert"]
    if cfg.redis_tls.get("key"):
        settings["ssl_keyfile"] = cfg.redis_tls["key"]
    return settings


def celery_settings(cfg: Config, broker_url: str) -> dict:
    return {
        "broker_use_ssl": tls_settings(cfg, broker_url),
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Redis redelivers an unacked message after this long: keep it above the job limit
            "visibility_timeout": cfg.visibility_timeout,
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            # kombu's own separator ("\x06\x16") is kept on purpose: it also encodes exchange
            # bindings, and Flower or `celery inspect` (which do not share these settings) must
            # read the same bindings to receive the workers' replies
            "queue_order_strategy": "priority",
            # detect a half-open connection instead of waiting on it forever
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": cfg.queue,
        "task_create_missing_queues": True,
        # ack after the ledger commit; a worker that dies mid-job leaves the message for another
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # task events let Flower (and `celery events`) show tasks live; they are off until a
        # monitor asks (Flower broadcasts enable_events itself): three to four Redis PUBLISHes
        # per message that nobody reads otherwise (issue 15). FARM_TASK_EVENTS=1 sends them always.
        "worker_send_task_events": cfg.task_events,
        "task_send_sent_event": cfg.task_events,
    }


_CELERY_IMPORT = threading.Lock()


def make_celery(cfg: Config, broker_url: str, main: str = "farm"):
    # celery's lazy top-level module is not safe to import from several threads at once
    with _CELERY_IMPORT:
        from celery import Celery

        app = Celery(main, set_as_current=False)
        app.conf.update(celery_settings(cfg, broker_url))
    return app


class Publisher:
    """Publishes micro-batches of job ids, each to the queue of its model."""

    def __init__(self, cfg: Config, broker_url: str):
        self.cfg = cfg
        self.app = make_celery(cfg, broker_url, main="farm-producer")
        self._bell_connection: Any = None
        self._bell: Any = None  # the doorbell's Redis client on the broker's own settings; False: none

    def doorbell_client(self):
        """A Redis client with the broker's settings (TLS, passwords) for the doorbell, or None
        where the broker is not Redis."""
        if self._bell is None:
            try:
                connection = self._bell_connection = self.app.connection_for_write()
                self._bell = connection.default_channel.client
            except Exception:  # noqa: BLE001 - no doorbell: waiters poll
                self._bell = False
        return self._bell or None

    def ring(self, batch_ids: Iterable[str]) -> int:
        """Tell waiters these batches moved (farm.fleet.doorbell); best-effort."""
        from farm.fleet.doorbell import ring

        client = self.doorbell_client()
        return ring(client, self.cfg.queue, batch_ids) if client is not None else 0

    def listener(self, batch_id: str):
        """A subscription to a batch's doorbell (farm.fleet.doorbell.Listener)."""
        from farm.fleet.doorbell import Listener

        return Listener(self.doorbell_client(), self.cfg.queue, batch_id)

    def publish(self, groups: Iterable[tuple[str, list[int]]], *, priority: int = 0) -> int:
        """``groups``: (model, job ids) pairs; one message each."""
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for model, job_ids in groups:
                    self.app.send_task(
                        RENDER_TASK, args=[list(job_ids)], queue=model_queue(self.cfg.queue, model),
                        priority=broker_priority(priority), producer=producer,
                        retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                  "interval_step": 0.5, "interval_max": 2},
                    )
                    sent += 1
        except Exception as exc:  # kombu raises many transport-specific errors
            raise InfrastructureError(f"cannot publish to the broker: {exc}") from None
        return sent

    def publish_to(self, queue: str, job_ids: list[int], *, priority: int = 0) -> None:
        """One message to a named queue (the fair-share dispatcher's, to one worker's own queue)."""
        try:
            with self.app.producer_or_acquire() as producer:
                self.app.send_task(RENDER_TASK, args=[list(job_ids)], queue=queue, priority=broker_priority(priority),
                                   producer=producer, retry=True,
                                   retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                                                 "interval_max": 2})
        except Exception as exc:  # kombu raises many transport-specific errors
            raise InfrastructureError(f"cannot publish to the broker: {exc}") from None

    def waiting_each(self, queues) -> dict[str, int]:
        """Messages waiting in each of these queues, every priority level counted."""
        return BrokerLayout(self.app, self.cfg.queue).waiting_each(queues)

    def drop_queues(self, queues) -> int:
        """Delete these queues' waiting messages (every priority level); how many there were."""
        return BrokerLayout(self.app, self.cfg.queue).drop(queues)

    def job_ids_in_broker(self, stale_after_s: float = 30.0) -> set[int]:
        """Every job id some message in the broker still carries (see ``BrokerLayout``)."""
        return BrokerLayout(self.app, self.cfg.queue).job_ids(stale_after_s)

    def waiting(self, queues) -> int:
        """Messages waiting in these queues, every priority level counted."""
        return BrokerLayout(self.app, self.cfg.queue).waiting(queues)

    def close(self) -> None:
        if self._bell_connection is not None:
            try:
                self._bell_connection.release()
            except Exception:  # noqa: BLE001
                pass
        self.app.close()


KOMBU_SEP = "\x06\x16"  # how kombu's Redis transport names a queue's priority levels


class BrokerLayout:
    """The one place that reads kombu's private Redis layout: a queue is one list per priority
    level (``queue``, ``queue\x06\x161`` ... ``\x06\x169``), delivered-but-unacked messages sit
    in the ``unacked`` hash, indexed by delivery time in the ``unacked_index`` sorted set. A kombu
    upgrade that changes it breaks only this class (the reconciler and the stuck-consumer check
    rely on it; tests/faults cover both)."""

    def __init__(self, app, base_queue: str):
        self.app = app
        self.base_queue = base_queue

    @staticmethod
    def _job_ids_of(raw, into: set[int]) -> None:
        import base64
        import json

        try:
            message = json.loads(raw)
            if isinstance(message, list):  # the unacked hash holds [message, exchange, routing key]
                message = message[0]
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            into.update(int(i) for i in args[0])
        except (ValueError, KeyError, IndexError, TypeError):
            pass  # not a farm message

    def job_ids(self, stale_after_s: float = 30.0) -> set[int]:
        """Every job id some message still carries: waiting in a queue (any priority level) or
        delivered and not acked for less than ``stale_after_s``. A delivery older than that whose
        job was never claimed went to a worker that died before claiming it (a live worker claims
        at once, and holds one message at a time); Redis would only restore it after the
        visibility timeout. Read through kombu's own Redis client."""
        import time

        ids: set[int] = set()
        try:
            with self.app.connection_for_read() as connection:
                client = connection.default_channel.client
                for key in client.scan_iter(match=f"{self.base_queue}.*", count=500):
                    if client.type(key) == b"list":
                        for raw in client.lrange(key, 0, -1):
                            self._job_ids_of(raw, ids)
                fresh = set(client.zrangebyscore("unacked_index", time.time() - stale_after_s, "+inf"))
                for tag, raw in client.hgetall("unacked").items():
                    if tag in fresh:
                        self._job_ids_of(raw, ids)
        except Exception as exc:  # noqa: BLE001 - transport errors come in many types
            raise InfrastructureError(f"cannot read the broker: {exc}") from None
        return ids

    @staticmethod
    def _levels(queue: str) -> list[str]:
        return [queue if level == 0 else f"{queue}{KOMBU_SEP}{level}" for level in range(MAX_PRIORITY + 1)]

    def waiting(self, queues) -> int:
        """Messages waiting in these queues, every priority level counted."""
        return sum(self.waiting_each(queues).values())

    def waiting_each(self, queues) -> dict[str, int]:
        """Messages waiting in each queue, every priority level counted (one round trip)."""
        queues = list(queues)
        try:
            with self.app.connection_for_read() as connection:
                pipe = connection.default_channel.client.pipeline(transaction=False)
                for queue in queues:
                    for key in self._levels(queue):
                        pipe.llen(key)
                lengths = pipe.execute()
        except Exception as exc:  # noqa: BLE001
            raise InfrastructureError(f"cannot read the broker: {exc}") from None
        per = MAX_PRIORITY + 1
        return {q: sum(lengths[i * per:(i + 1) * per]) for i, q in enumerate(queues)}

    def drop(self, queues) -> int:
        """Delete these queues' messages, every priority level; how many there were."""
        queues = list(queues)
        if not queues:
            return 0
        counts = self.waiting_each(queues)
        try:
            with self.app.connection_for_write() as connection:
                client = connection.default_channel.client
                keys = [key for q in queues if counts.get(q) for key in self._levels(q)]
                if keys:
                    client.delete(*keys)
        except Exception as exc:  # noqa: BLE001
            raise InfrastructureError(f"cannot write to the broker: {exc}") from None
        return sum(counts.values())
