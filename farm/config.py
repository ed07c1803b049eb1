"""Configuration from ``FARM_*`` environment variables (CLI flags override them).

The environment is passed in as a mapping so the parsing is a pure function. Bad values fail at
start with the variable's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from farm.errors import ConfigError
from farm.models.catalog import ARCHS

DEFAULT_MODEL = "tiny-sd"


@dataclass(frozen=True)
class Config:
    home: Path
    database_url: str
    broker_url: str | None  # None: the embedded Redis under the farm home
    store_url: str
    s3_endpoint_url: str | None
    model_cache: Path
    default_model: str
    micro_batch: int  # most images in one Celery message / one pipeline call
    micro_batch_rules: tuple  # (family, min longer side, size): per family and resolution

    # pipeline calls run at batch sizes that are multiples of this (None: 4 on CPU, 1 on CUDA)
    batch_bucket: int | None
    max_resident_models: int
    fuse_accelerator: bool | None  # None: on for CUDA, off for CPU
    compile_unet: bool  # torch.compile the UNet (FARM_COMPILE=1)
    max_adapters: int  # LoRAs loaded into one pipeline at once
    max_adapter_mb: int  # ... and their bytes
    host_lora_mb: int  # LoRA state dicts kept in host RAM for re-attach
    queue: str
    aging_s: int  # a queued job waiting this long moves up one priority level
    maintenance_s: int  # how often a worker runs fleet maintenance (when it holds the lease)
    lease_s: int  # a claim lives this long unless the worker renews it (it does, every lease/3)
    max_attempts: int  # executions of a job before it is failed for good
    retry_backoff_s: int  # first retry delay; doubles with each attempt
    quarantine_s: int  # a worker that keeps failing one model leaves it alone this long
    renderer: str  # "diffusion", or "sleep:SECONDS" (fault tests, no torch)
    redis_tls: dict  # rediss:// settings: CA file, client certificate and key (FARM_REDIS_*_FILE)
    visibility_timeout: int  # seconds before Redis redelivers an unacked message
    job_time_limit: int  # seconds a micro-batch may run
    store_overlap: bool = True  # store a micro-batch's images while the next one renders
    preview_decoders: tuple = ()  # (arch, source) of TAESD decoders, over the built-in hub ids
    dtype: str = "auto"  # weights and activations: fp16 on CUDA, fp32 on CPU; or fp16, bf16, fp32
    io_threads: int = 2  # threads encoding and uploading images
    no_worker_warn_s: int = 30  # a wait says no live worker can render its batch after this long
    task_events: bool = False  # Celery task events from the start (a monitor such as Flower turns them on itself)
    secret_key_file: Path | None = None  # the HMAC secret API keys are stored under (issue 23); None: <home>/secret.key
    secret_key: str | None = field(default=None, repr=False)  # FARM_SECRET_KEY itself, where given
    # issue 24: "fifo" publishes a batch's micro-batches when it is submitted (one tenant, or
    # tenants that trust each other); "fair" leaves them to the dispatcher, which publishes a few
    # ahead of each worker in weighted fair order between tenants
    scheduler: str = "fifo"
    dispatch_ahead: int = 1  # micro-batches waiting at each worker beyond the one it renders
    # networks a webhook may reach although they are loopback or private (issue 25): "127.0.0.0/8,..."
    webhook_allowed_nets: tuple[str, ...] = ()
    # issue 26: the backlog's target drain time, for the desired worker count the metrics report
    drain_target_s: int = 300

    @property
    def run_dir(self) -> Path:
        """Pid files, sockets and logs of the local farm."""
        return self.home / "run"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    def micro_batch_for(self, family: str, width: int, height: int) -> int:
        """How many images share a pipeline call: the most specific FARM_MICRO_BATCH_SIZES rule for
        the family whose side threshold the image reaches, else FARM_MICRO_BATCH."""
        side = max(width, height)
        fitting = [r for r in self.micro_batch_rules if r[0] == family and side >= r[1]]
        return max(fitting, key=lambda r: r[1])[2] if fitting else self.micro_batch

    def with_overrides(self, **changes) -> "Config":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def redact_url(url: str | None) -> str | None:
    """A URL with its password replaced, for anything printed or logged."""
    if not url:
        return url
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        return parsed._replace(netloc=netloc).geturl()
    return url


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A value from NAME, or read from the file NAME_FILE (Docker/Kubernetes secrets)."""
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE", f"cannot read {path}: {exc.strerror}") from None
    return env.get(name)


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    raw = _secret(env, name)
    if raw is None or raw == "":
        return None
    scheme = urlparse(raw).scheme
    if scheme not in schemes:
        raise ConfigError(name, f"unsupported URL scheme {scheme!r} (expected one of {', '.join(schemes)})")
    return raw


def load_config(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Config:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    home = Path(env.get("FARM_HOME") or cwd / ".farm").expanduser()
    if not home.is_absolute():
        home = cwd / home
    database_url = _url(
        env, "FARM_DATABASE_URL",
        ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgres"),
    ) or f"sqlite:///{home / 'ledger.db'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://"):]
    if database_url.startswith("postgresql://"):
        # psycopg 3 is the driver the project installs
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
    broker_url = _url(env, "FARM_BROKER_URL", ("redis", "rediss", "redis+socket"))
    store_url = _url(env, "FARM_STORE_URL", ("file", "s3")) or (home / "store").as_uri()
    if store_url.startswith("s3://") and not urlparse(store_url).netloc:
        raise ConfigError("FARM_STORE_URL", "an s3:// URL needs a bucket: s3://BUCKET[/PREFIX]")
    s3_endpoint = _url(env, "FARM_S3_ENDPOINT_URL", ("http", "https"))
    model_cache = Path(env.get("FARM_MODEL_CACHE") or home / "models").expanduser()
    default_model = env.get("FARM_DEFAULT_MODEL") or DEFAULT_MODEL
    micro_batch = _int(env, "FARM_MICRO_BATCH", 8, 1, 64)
    rules = []
    for item in (env.get("FARM_MICRO_BATCH_SIZES") or "").replace(" ", "").split(","):
        if not item:
            continue
        try:
            target, size = item.split("=")
            family, _, side = target.partition("@")
            rule = (family, int(side or 0), int(size))
        except ValueError:
            raise ConfigError("FARM_MICRO_BATCH_SIZES", f"expected FAMILY@SIDE=SIZE items such as sdxl@1024=4, "
                                                        f"got {item!r}") from None
        if not 1 <= rule[2] <= 64:
            raise ConfigError("FARM_MICRO_BATCH_SIZES", f"size {rule[2]} is outside 1..64")
        rules.append(rule)
    batch_bucket = _int(env, "FARM_BATCH_BUCKET", 0, 0, 64) or None
    max_models = _int(env, "FARM_MAX_RESIDENT_MODELS", 2, 1, 16)
    fuse_raw = (env.get("FARM_FUSE_ACCELERATOR") or "auto").lower()
    if fuse_raw not in ("auto", "on", "off"):
        raise ConfigError("FARM_FUSE_ACCELERATOR", f"expected auto, on or off, got {fuse_raw!r}")
    fuse = None if fuse_raw == "auto" else fuse_raw == "on"
    max_adapters = _int(env, "FARM_MAX_ADAPTERS", 8, 1, 256)
    compile_unet = _int(env, "FARM_COMPILE", 0, 0, 1) == 1
    max_adapter_mb = _int(env, "FARM_MAX_ADAPTER_MB", 2048, 1, 1 << 20)
    host_lora_mb = _int(env, "FARM_HOST_LORA_MB", 4096, 0, 1 << 20)
    redis_tls = {}
    for variable, key in (("FARM_REDIS_CA_FILE", "ca"), ("FARM_REDIS_CERT_FILE", "cert"), ("FARM_REDIS_KEY_FILE", "key")):
        if env.get(variable):
            if not Path(env[variable]).is_file():
                raise ConfigError(variable, f"no such file: {env[variable]}")
            redis_tls[key] = env[variable]
    queue = env.get("FARM_QUEUE") or "farm"
    if not queue.replace("-", "").replace(".", "").replace("_", "").isalnum():
        raise ConfigError("FARM_QUEUE", f"queue names use letters, digits, '.', '_' and '-', got {queue!r}")
    visibility = _int(env, "FARM_VISIBILITY_TIMEOUT", 3600, 10, 7 * 24 * 3600)
    aging = _int(env, "FARM_AGING_S", 300, 1, 7 * 24 * 3600)
    lease = _int(env, "FARM_LEASE_S", 60, 3, 24 * 3600)
    max_attempts = _int(env, "FARM_MAX_ATTEMPTS", 3, 1, 100)
    backoff = _int(env, "FARM_RETRY_BACKOFF_S", 5, 0, 3600)
    quarantine = _int(env, "FARM_QUARANTINE_S", 300, 1, 7 * 24 * 3600)
    renderer = env.get("FARM_RENDERER") or "diffusion"
    if renderer != "diffusion":
        kind, _, seconds = renderer.partition(":")
        try:
            ok = kind == "sleep" and 0 <= float(seconds or 0) <= 3600
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError("FARM_RENDERER", f"expected diffusion or sleep:SECONDS, got {renderer!r}")
    maintenance = _int(env, "FARM_MAINTENANCE_S", 10, 1, 3600)
    scheduler = (env.get("FARM_SCHEDULER") or "fifo").lower()
    if scheduler not in ("fifo", "fair"):
        raise ConfigError("FARM_SCHEDULER", f"expected fifo or fair, got {scheduler!r}")
    dispatch_ahead = _int(env, "FARM_DISPATCH_AHEAD", 1, 1, 16)
    drain_target = _int(env, "FARM_DRAIN_TARGET_S", 300, 1, 7 * 24 * 3600)
    time_limit = _int(env, "FARM_JOB_TIME_LIMIT", 900, 1, 24 * 3600)
    store_overlap = _int(env, "FARM_STORE_OVERLAP", 1, 0, 1) == 1
    io_threads = _int(env, "FARM_IO_THREADS", 2, 1, 64)
    task_events = _int(env, "FARM_TASK_EVENTS", 0, 0, 1) == 1
    # long enough for fresh workers to load their libraries and register
    no_worker_warn_s = _int(env, "FARM_NO_WORKER_WARN_S", 30, 0, 86400)
    dtype = (env.get("FARM_DTYPE") or "auto").lower()
    if dtype not in ("auto", "fp16", "bf16", "fp32"):
        raise ConfigError("FARM_DTYPE", f"expected auto, fp16, bf16 or fp32, got {dtype!r}")
    preview_decoders = []
    for item in (env.get("FARM_PREVIEW_DECODERS") or "").split(","):
        arch, sep, source = item.strip().partition("=")
        if not item.strip():
            continue
        if not sep or arch not in ARCHS or not source.strip():
            raise ConfigError("FARM_PREVIEW_DECODERS", f"expected ARCH=SOURCE items such as sdxl=/models/taesdxl "
                                                       f"(archs: {', '.join(ARCHS)}), got {item.strip()!r}")
        preview_decoders.append((arch, source.strip()))
    if lease >= visibility:
        raise ConfigError("FARM_LEASE_S", f"{lease}s must stay below FARM_VISIBILITY_TIMEOUT ({visibility}s)")
    if time_limit >= visibility:
        raise ConfigError(
            "FARM_JOB_TIME_LIMIT",
            f"{time_limit}s must stay below FARM_VISIBILITY_TIMEOUT ({visibility}s), or Redis "
            "redelivers a job that is still rendering",
        )
    return Config(
        home=home, database_url=database_url, broker_url=broker_url, store_url=store_url,
        s3_endpoint_url=s3_endpoint, model_cache=model_cache, default_model=default_model,
        micro_batch=micro_batch, micro_batch_rules=tuple(rules), batch_bucket=batch_bucket, max_resident_models=max_models,
        fuse_accelerator=fuse, compile_unet=compile_unet, max_adapters=max_adapters, max_adapter_mb=max_adapter_mb,
        host_lora_mb=host_lora_mb,
        queue=queue, aging_s=aging, maintenance_s=maintenance, lease_s=lease, max_attempts=max_attempts,
        retry_backoff_s=backoff, quarantine_s=quarantine, renderer=renderer, redis_tls=redis_tls,
        visibility_timeout=visibility,
        job_time_limit=time_limit, store_overlap=store_overlap, io_threads=io_threads,
        preview_decoders=tuple(preview_decoders), dtype=dtype, no_worker_warn_s=no_worker_warn_s,
        task_events=task_events,
        secret_key_file=Path(env["FARM_SECRET_KEY_FILE"]).expanduser() if env.get("FARM_SECRET_KEY_FILE") else None,
        secret_key=env.get("FARM_SECRET_KEY") or None,
        scheduler=scheduler, dispatch_ahead=dispatch_ahead,
        webhook_allowed_nets=_networks(env, "FARM_WEBHOOK_ALLOWED_NETS"), drain_target_s=drain_target,
    )


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    import ipaddress

    nets = [item.strip() for item in env.get(name, "").split(",") if item.strip()]
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(name, f"{net!r} is not a network (e.g. 127.0.0.0/8,10.0.0.0/8)") from None
    return tuple(nets)
