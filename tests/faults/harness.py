"""A small farm for fault injection: real worker processes with the sleep renderer (no torch), a
real Redis of the test's own, a SQLite ledger and a file store, fast maintenance and short leases."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from tests import servers

ROOT = Path(__file__).resolve().parents[2]


class FaultFarm:
    def __init__(self, tmp: Path, broker_url: str, *, seconds: float = 0.2, workers: int = 2, extra: dict | None = None):
        self.tmp = tmp
        self.workers = workers
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(
            FARM_HOME=str(tmp / "home"), FARM_BROKER_URL=broker_url, FARM_RENDERER=f"sleep:{seconds}",
            FARM_MICRO_BATCH="1", FARM_LEASE_S="3", FARM_MAINTENANCE_S="1", FARM_RETRY_BACKOFF_S="1",
            FARM_MAX_ATTEMPTS="3", FARM_QUEUE="faults", FARM_DEFAULT_MODEL="tiny-sd",
        )
        env.update(extra or {})
        self.env = env
        self.supervisor: subprocess.Popen | None = None
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = open(tmp / "workers.log", "ab")
        self.engine = None

    # -- processes ------------------------------------------------------------------------------
    def start(self) -> None:
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "worker", "--workers", str(self.workers), "--models", "tiny-sd"],
            env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        servers.wait_until(lambda: len(self.worker_pids()) == self.workers, 60, what="worker processes")

    def worker_pids(self) -> list[int]:
        import psutil

        if self.supervisor is None or self.supervisor.poll() is not None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.supervisor.pid).children() if c.is_running()
                    and c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.supervisor is None or self.supervisor.poll() is not None:
            return None
        self.supervisor.send_signal(sig)
        try:
            return self.supervisor.wait(timeout)
        except subprocess.TimeoutExpired:
            self.supervisor.kill()
            return self.supervisor.wait()

    # -- the CLI and the ledger -----------------------------------------------------------------
    def cli(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=self.env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"farm {' '.join(args)}: {result.stderr[-2000:]}")
        return result

    def submit(self, prompt: str, n: int, seed: int = 0, *extra: str) -> dict:
        return json.loads(self.cli("submit", prompt, "--variants", str(n), "--seed", str(seed), "--json",
                                   *extra).stdout)

    def sql(self, query: str, **params):
        if self.engine is None:
            self.engine = create_engine(f"sqlite:///{self.tmp / 'home' / 'ledger.db'}", connect_args={"timeout": 30})
        with self.engine.connect() as conn:
            return conn.execute(text(query), params).all()

    def counts(self, batch: str) -> dict[str, int]:
        return dict(self.sql("select state, count(*) from jobs where batch_id = :b group by state", b=batch))

    def wait_done(self, batch: str, total: int, timeout: float = 180) -> dict:
        def done():
            counts = self.counts(batch)
            finished = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            return counts if finished == total else None

        return servers.wait_until(done, timeout, interval=0.25, what=f"batch {batch} to finish")

    def log_text(self) -> str:
        """What the supervisor and its workers have written to workers.log so far."""
        return (self.tmp / "workers.log").read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float, what: str) -> None:
        servers.wait_until(lambda: text in self.log_text(), timeout, interval=0.1, what=what)

    def audit(self, batch: str) -> dict:
        """What happened to a batch: lost jobs, duplicate outputs, extra executions."""
        jobs = self.sql("select id, state from jobs where batch_id = :b", b=batch)
        rows = self.sql("select a.job_id, a.outcome from attempts a join jobs j on j.id = a.job_id "
                        "where j.batch_id = :b", b=batch)
        succeeded_attempts: dict[int, int] = {}
        attempts: dict[int, int] = {}
        for job_id, outcome in rows:
            attempts[job_id] = attempts.get(job_id, 0) + 1
            if outcome == "succeeded":
                succeeded_attempts[job_id] = succeeded_attempts.get(job_id, 0) + 1
        artifacts = self.sql("select count(*) from artifacts a join jobs j on j.id = a.job_id where j.batch_id = :b",
                             b=batch)[0][0]
        return {
            "jobs": len(jobs),
            "lost": sum(1 for _, state in jobs if state != "succeeded"),
            "duplicate_outputs": sum(n - 1 for n in succeeded_attempts.values() if n > 1),
            "extra_executions": sum(n - 1 for n in attempts.values() if n > 1),
            "artifacts": artifacts,
        }

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        if self.engine is not None:
            self.engine.dispose()
        self.log.close()


def kill_randomly(pids_fn, times: int, rng: random.Random, *, sig=signal.SIGKILL, between=(0.2, 0.8),
                  after_kill=None) -> list[float]:
    """Kill a random process from ``pids_fn()`` ``times`` times at random moments; returns when."""
    moments = []
    for _ in range(times):
        time.sleep(rng.uniform(*between))
        pids = servers.wait_until(pids_fn, 60, interval=0.05, what="a process to kill")
        victim = rng.choice(pids)
        try:
            os.kill(victim, sig)
            moments.append(time.monotonic())
        except ProcessLookupError:
            continue
        if after_kill:
            after_kill()
    return moments


class SilentProxy:
    """A TCP proxy that can go silent: connections stay open but no byte passes either way."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.silent = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.5)
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                data = source.recv(65536)
                if not data:
                    break
                while self.silent.is_set() and not self.closed.is_set():
                    time.sleep(0.05)  # hold the bytes: the connection is half-dead, not closed
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.server.close()


class FlakyS3Proxy:
    """An HTTP proxy in front of the S3 server that answers 503 SlowDown to a share of requests."""

    def __init__(self, target: str, failure_rate: float, seed: int = 0):
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        upstream = urlparse(target)
        rng = random.Random(seed)
        lock = threading.Lock()
        stats = {"requests": 0, "failed": 0}
        self.stats = stats

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    stats["requests"] += 1
                    fail = rng.random() < failure_rate
                    stats["failed"] += fail
                if fail:
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                               b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
