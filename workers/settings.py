"""What one worker process is told by whoever started it (``farm worker``'s supervisor, a
container's environment): its name, device, queues, threads, metrics port, log format.

Read from the process environment once, here, into one value the rest of the worker is given;
fleet-wide settings stay in ``farm.config.Config``. A bad value fails at start naming the variable.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from farm.config import _int
from farm.errors import ConfigError


@dataclass(frozen=True)
class WorkerSettings:
    name: str
    device: str  # "cpu" or "cuda:N" (the process sees that one GPU as cuda:0)
    queues: tuple[str, ...]  # what it consumes from the start
    serve_all_models: bool  # also consume the queues of models registered later
    torch_threads: int  # 0: torch's default
    metrics_port: int  # 0: no metrics endpoint
    metrics_addr: str
    log_format: str  # "text" or "json"
    offload: str = "none"  # engine.offload: none, model or sequential (small GPUs)
    vae_tiling: bool = False  # decode large images in tiles, a batch one image at a time
    # a stop signal lets the current micro-batch finish for this long before handing it back: keep
    # it under the grace period the process gets before its kill (Kubernetes'
    # terminationGracePeriodSeconds, compose's stop_grace_period). 0: hand back at the next step
    stop_grace_s: int = 0
    preload: bool = False  # load the served models' pipelines before taking work (ready once warm)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        device = env.get("FARM_DEVICE") or "cpu"
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError("FARM_DEVICE", f"expected cpu or cuda:N, got {device!r}")
        log_format = (env.get("FARM_LOG_FORMAT") or "text").lower()
        if log_format not in ("text", "json"):
            raise ConfigError("FARM_LOG_FORMAT", f"expected text or json, got {log_format!r}")
        offload = (env.get("FARM_OFFLOAD") or "none").lower()
        if offload not in ("none", "model", "sequential"):
            raise ConfigError("FARM_OFFLOAD", f"expected none, model or sequential, got {offload!r}")
        return cls(
            name=env.get("FARM_WORKER_NAME") or f"farm-{os.getpid()}@{socket.gethostname()}",
            device=device,
            queues=tuple(q for q in (env.get("FARM_QUEUES") or "").split(",") if q),
            serve_all_models=env.get("FARM_SERVE_ALL_MODELS") == "1",
            torch_threads=_int(env, "FARM_TORCH_THREADS", 0, 0, 1024),
            metrics_port=_int(env, "FARM_METRICS_PORT", 0, 0, 65535),
            metrics_addr=env.get("FARM_METRICS_ADDR") or "127.0.0.1",
            log_format=log_format,
            offload=offload,
            vae_tiling=_int(env, "FARM_VAE_TILING", 0, 0, 1) == 1,
            stop_grace_s=_int(env, "FARM_STOP_GRACE_S", 0, 0, 3600),
            preload=_int(env, "FARM_PRELOAD", 0, 0, 1) == 1,
        )
