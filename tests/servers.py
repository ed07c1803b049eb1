"""Real servers for the test suite, started here on free ports or unix sockets in temp dirs.

Never connect to a server this run did not start: other processes on these machines run their
own Redis and PostgreSQL on nearby ports.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from farm.fleet.localfarm import redis_server_binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    url: str
    port: int | None
    socket_path: str | None
    proc: subprocess.Popen
    directory: Path
    password: str | None = None

    def client(self):
        import redis

        if self.socket_path:
            return redis.Redis(unix_socket_path=self.socket_path, password=self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def stop(self) -> None:
        terminate(self.proc)


def start_redis(directory: Path, *, tcp: bool = True, password: str | None = None,
                appendonly: bool = False, port: int | None = None) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--dir", str(directory), "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--daemonize", "no"]
    sock = None
    if tcp:
        port = port or free_port()
        args += ["--port", str(port), "--bind", "127.0.0.1"]
    else:
        sock = str(Path(tempfile.mkdtemp(prefix="r", dir="/tmp")) / "redis.sock")
        args += ["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700"]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=open(directory / "redis.log", "ab"), stderr=subprocess.STDOUT)
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{port}/0" if tcp else f"redis+socket://{sock}"
    server = RedisServer(url, port, sock, proc, directory, password)

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(directory / 'redis.log').read_text()[-500:]}")
        try:
            return server.client().ping()
        except Exception:  # noqa: BLE001
            return False

    wait_until(ready, 15, what="redis-server")
    return server


@dataclass
class PostgresServer:
    url: str  # SQLAlchemy URL (psycopg 3)
    handle: object

    def new_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url.replace("/postgres?", f"/{name}?")

    def stop(self) -> None:
        self.handle.cleanup()


def start_postgres(directory: Path) -> PostgresServer:
    import pgserver

    handle = pgserver.get_server(str(directory), cleanup_mode="stop")
    uri = handle.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>: no TCP port at all
    return PostgresServer(uri.replace("postgresql://", "postgresql+psycopg://", 1), handle)


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def stop(self) -> None:
        terminate(self.proc)


S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3(directory: Path) -> S3Server:
    """moto's S3-compatible HTTP server, in its own process on a free loopback port."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(directory / "moto.log", "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, **S3_ENV})
    server = S3Server(f"http://127.0.0.1:{port}", proc)

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {(directory / 'moto.log').read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(ready, 30, what="moto_server")
    return server
