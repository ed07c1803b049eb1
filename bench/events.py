"""Event latency (issue 25): from the ledger write to the webhook POST and to the SSE client.

A real ``farm serve`` (with its webhook deliverer), 8 sleep workers rendering one batch, the
suite's kind of PostgreSQL and Redis started here, a real local webhook receiver and an SSE
client reading ``GET /v1/events``. Each event's latency is its arrival time minus the time the
ledger stamped it (``created_at``, taken inside the writing transaction: the commit is included),
on one machine's clock. Targets: p99 at most 5 s to the webhook, 1 s to the stream.

Premise checked before anything is written: every job's event reached both the receiver and the
stream, and 8 workers were registered while the batch rendered.

    .venv/bin/python bench/events.py [--images 400] [--workers 8] [--sleep 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(1000 * percentile(values, 0.5), 1),
            "p99_ms": round(1000 * percentile(values, 0.99), 1), "max_ms": round(1000 * max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds a sleep worker takes per image")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "events.json"))
    args = parser.parse_args()

    import httpx

    from farm.client.events import parse
    from tests import servers
    from tests.service.receiver import Receiver

    work = Path(tempfile.mkdtemp(prefix="farm-events-"))
    pg = servers.start_postgres(work / "pg")
    redis = servers.start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_DATABASE_URL=pg.new_database("events"), FARM_BROKER_URL=redis.url,
               FARM_RENDERER=f"sleep:{args.sleep}", FARM_QUEUE="eventsbench", FARM_DEFAULT_MODEL="tiny-sd",
               FARM_MICRO_BATCH="1", FARM_WEBHOOK_ALLOWED_NETS="127.0.0.0/8")

    def cli(*argv: str) -> str:
        return subprocess.run([sys.executable, "-m", "farm.cli", *argv], env=env, cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    cli("db", "upgrade")
    key = json.loads(cli("keys", "create", "--tenant", "bench", "--json"))["key"]
    receiver = Receiver().start()
    cli("webhooks", "add", receiver.url, "--tenant", "bench", "--events", "job.succeeded,batch.finished")
    port = servers.free_port()
    log = open(work / "server.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "farm.cli", "serve", "--port", str(port), "--log-level",
                               "warning"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    workers = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", str(args.workers),
                                "--models", "tiny-sd"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    streamed: dict[int, tuple[float, str]] = {}
    opened = threading.Event()

    def follow():
        try:
            _read(opened)
        except httpx.HTTPError:
            pass  # closed at the end of the run

    def _read(opened):
        with client.stream("GET", "/v1/events", headers={"Accept": "text/event-stream"}, timeout=None) as answer:
            for block in parse(answer.iter_lines()):
                opened.set()
                if "id" in block:
                    event = json.loads(block["data"])
                    streamed[event["id"]] = (time.time(), event["created_at"])

    try:
        servers.wait_until(lambda: _up(client), 60, what="farm serve")
        servers.wait_until(lambda: len(client.get("/v1/workers").json()) >= args.workers, 120, what="workers")
        threading.Thread(target=follow, daemon=True).start()
        opened.wait(10)
        started = time.time()
        batch = client.post("/v1/batches", json={"prompt": "a red circle", "model": "tiny-sd",
                                                 "seeds": f"1-{args.images}"}).json()["batch"]
        servers.wait_until(lambda: any(json.loads(m["body"])["type"] == "batch.finished"
                                       for m in receiver.messages()), 600, interval=0.2, what="the batch's webhooks")
        wall = time.time() - started
        time.sleep(1.0)
        hooks = [(m["at"], json.loads(m["body"])) for m in receiver.messages()]
        hook_latency = [at - datetime.fromisoformat(b["timestamp"]).timestamp() for at, b in hooks
                        if b["type"] == "job.succeeded" and b["data"]["batch"] == batch]
        sse_latency = [at - datetime.fromisoformat(created).timestamp() for at, created in streamed.values()]
        busy_workers = len(client.get("/v1/workers").json())
        # the premise: every image's event reached both, with every worker there
        assert len(hook_latency) == args.images, (len(hook_latency), args.images)
        assert len([1 for at, c in streamed.values()]) >= args.images + 2, len(streamed)
        assert busy_workers >= args.workers, busy_workers
        result = {
            "benchmark": "events", "machine": platform.node(), "cpus": os.cpu_count(), "images": args.images,
            "workers": args.workers, "sleep_s": args.sleep, "render_wall_s": round(wall, 2),
            "images_per_s": round(args.images / wall, 1),
            "ledger_to_webhook": summary(hook_latency), "ledger_to_sse": summary(sse_latency),
            "targets": {"webhook_p99_ms": 5000, "sse_p99_ms": 1000},
            "command": "python bench/events.py " + " ".join(sys.argv[1:]),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
    finally:
        client.close()
        for proc in (workers, server):
            servers.terminate(proc)
        receiver.stop()
        redis.stop()
        pg.stop()


def _up(client) -> bool:
    import httpx

    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
