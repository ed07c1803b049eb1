"""Per-job overhead of the farm at zero backlog: queue + ledger + storage, with a renderer that
does nothing (FARM_RENDERER=sleep:0, no torch), client to client on both sides.

The farm: one job at a time through the library API of a warm client (``Farm.submit`` until
``Farm.wait`` returns: planning, the ledger's batch, the publish, Redis, the worker's claim,
render(0), PNG encode, store write, the completion commit, and the waiter learning of it). The
anchor, measured in the same run through the same Redis: a bare Celery no-op round trip
(``apply_async`` until ``get`` returns; Redis broker and result backend, solo pool). The JSON has
their ratio (the headline) and, as context, the ledger's server-side created -> finished time.

    .venv/bin/python bench/overhead.py [--jobs 300] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


ANCHOR_APP = """
from celery import Celery
import os
url = os.environ["ANCHOR_BROKER"]
app = Celery("anchor", broker=url, backend=url)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                worker_prefetch_multiplier=1, task_default_queue="anchor")


@app.task(name="anchor.noop")
def noop():
    return None
"""


def celery_round_trip_ms(broker: str, work: Path, rounds: int) -> list[float]:
    """The anchor: a bare Celery no-op round trip (apply_async + get) through the same Redis,
    Redis as the result backend, one solo-pool worker; the first 20 warm up."""
    (work / "anchor_app.py").write_text(ANCHOR_APP)
    env = {**os.environ, "ANCHOR_BROKER": broker, "PYTHONPATH": str(work)}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "anchor_app", "worker", "--pool=solo",
                               "--concurrency=1", "-Q", "anchor", "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "--loglevel=WARNING"], env=env, cwd=work,
                              stdout=open(work / "anchor.log", "wb"), stderr=subprocess.STDOUT)
    sys.path.insert(0, str(work))
    os.environ["ANCHOR_BROKER"] = broker
    try:
        import anchor_app

        anchor_app.noop.apply_async().get(timeout=120)  # the worker is up
        times = []
        for i in range(rounds + 20):
            started = time.perf_counter()
            anchor_app.noop.apply_async().get(timeout=30)
            if i >= 20:
                times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        worker.terminate()
        worker.wait(30)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()

    from farm.config import load_config
    from farm.fleet.localfarm import ensure_redis, stop_redis
    from farm.ledger import Ledger

    work = Path(tempfile.mkdtemp(prefix="farm-overhead-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_RENDERER="sleep:0", FARM_QUEUE="overhead")
    pg = None
    if args.database == "postgres":
        import pgserver

        pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
        env["FARM_DATABASE_URL"] = pg.get_uri()
        subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
    cfg = load_config(env)
    ledger = Ledger(cfg.database_url)
    broker = ensure_redis(cfg)
    env["FARM_BROKER_URL"] = broker
    worker = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", "1", "--models", "tiny-sd"],
                              env=env, cwd=ROOT, stdout=open(work / "worker.log", "wb"), stderr=subprocess.STDOUT)
    os.environ.update({k: v for k, v in env.items() if k.startswith("FARM_")})
    import farm as farm_lib

    client = farm_lib.Farm.connect(env)
    server_ms, client_ms, stages = [], [], {"queue_wait": [], "image_encode": [], "upload": [], "total": []}
    try:
        while not ledger.workers():
            time.sleep(0.1)
        anchor_ms = celery_round_trip_ms(broker, work, args.jobs)  # measured first, the farm then
        for i in range(args.jobs + 20):  # the first 20 warm up the worker's and the client's connections
            started = time.perf_counter()
            batch = client.submit(f"overhead {i}", model="tiny-sd", seed=i)
            client.wait(batch)
            elapsed = (time.perf_counter() - started) * 1000
            if i < 20:
                continue
            [job] = ledger.list_jobs(batch)
            if job.state != "succeeded":
                raise RuntimeError(f"job {job.id} {job.state}: {job.last_error}")
            server_ms.append((job.finished_at - job.created_at).total_seconds() * 1000)
            client_ms.append(elapsed)
            for stage in stages:
                stages[stage].append(job.timings[stage] or 0.0)
    finally:
        worker.terminate()
        worker.wait(30)
        client.close()
        ledger.close()
        stop_redis(cfg)
        if pg is not None:
            pg.cleanup()
    result = {
        "benchmark": "overhead", "renderer": "sleep:0 (no model)", "database": args.database, "jobs": args.jobs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "farm_client_to_client_ms": {"p50": round(statistics.median(client_ms), 2),
                                     "p99": round(percentile(client_ms, 0.99), 2),
                                     "what": "Farm.submit until Farm.wait returns, a warm client"},
        "ledger_created_to_finished_ms": {"p50": round(statistics.median(server_ms), 2),
                                          "p99": round(percentile(server_ms, 0.99), 2)},
        "stages_ms_p50": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "celery_client_to_client_ms": {"p50": round(statistics.median(anchor_ms), 2),
                                       "p99": round(percentile(anchor_ms, 0.99), 2),
                                       "what": "apply_async until get returns"},
        "ratio_farm_over_celery_p50": round(statistics.median(client_ms) / statistics.median(anchor_ms), 2),
        "ratio_server_side_over_celery_p50": round(statistics.median(server_ms) / statistics.median(anchor_ms), 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    def curve(values):
        ordered = sorted(values)
        return [100 * (i + 1) / len(ordered) for i in range(len(ordered))], ordered

    save_lines(Path(args.out).with_suffix(".png"),
               {"farm: submit -> wait returns": curve(client_ms), "celery: apply_async -> get": curve(anchor_ms)},
               xlabel="percentile of jobs", ylabel="ms per job (no-op renderer)", log_x=False, target=5.0,
               title=f"per-job overhead, {args.database}, zero backlog")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
