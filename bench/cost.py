"""What one image costs the farm's own machinery, by process, and what an idle fleet costs.

N sleep workers (FARM_RENDERER=sleep: no torch, the sleep stands for GPU time) against one
PostgreSQL ledger and one Redis, both started here. Measured from outside the farm:

- CPU ms (utime + stime from /proc) of the workers, their supervisor, Redis and every PostgreSQL
  process, and of the submitting client;
- SQL statements and transactions: each worker's own count (served on its metrics endpoint) plus
  the client's, and PostgreSQL's committed transactions (pg_stat_database) as a cross-check;
- Redis commands (INFO commandstats).

First the fleet idles (heartbeats, polling, lease keeping, maintenance, Celery events), then a
batch runs; per image = (after - before) / images, also with the idle cost of the same seconds
taken out. The client's cost is its submission; the benchmark's own wait for the batch (a poll
every 0.25 s, on a ledger of its own) is not counted: it is one watcher, not a cost per image.

    .venv/bin/python bench/cost.py [--workers 8] [--images 400] [--sleep 0.05] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of one process, in ms (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def metric_sum(ports: list[int], name: str) -> float:
    total = 0.0
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds per image (the 'GPU')")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cost.json"))
    args = parser.parse_args()

    import pgserver

    from farm.config import load_config
    from farm.fleet.dispatch import Publisher
    from farm.fleet.producer import submit
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger
    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-cost-"))
    pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
    redis = servers.start_redis(work / "redis")
    base_port = servers.free_port()
    ports = [base_port + i for i in range(args.workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_RENDERER=f"sleep:{args.sleep}", FARM_QUEUE="cost",
               FARM_DATABASE_URL=pg.get_uri(), FARM_BROKER_URL=redis.url, FARM_MICRO_BATCH=str(args.micro_batch),
               FARM_METRICS_PORT=str(base_port))
    subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    cfg = load_config(env)
    ledger = Ledger(cfg.database_url)
    # the benchmark's own wait for the batch (as `farm run` watches one, 4 times a second): a
    # ledger of its own, whose transactions are left out of the farm's per-image cost
    watcher = Ledger(cfg.database_url)
    publisher = Publisher(cfg, redis.url)
    postmaster = pg.get_pid()
    supervisor = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", str(args.workers),
                                   "--models", "tiny-sd"], env=env, cwd=ROOT,
                                  stdout=open(work / "workers.log", "wb"), stderr=subprocess.STDOUT)

    def snapshot() -> dict:
        workers = children(supervisor.pid)
        pg_pids = [postmaster, *children(postmaster)]
        calls = sum(v["calls"] for k, v in redis.client().info("commandstats").items() if k.startswith("cmdstat_"))
        xacts = ledger.engine.connect().__enter__().exec_driver_sql(
            "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()").scalar()
        return {
            "t": time.monotonic(),
            "cpu_ms": {"workers": sum(cpu_ms(p) for p in workers), "supervisor": cpu_ms(supervisor.pid),
                       "redis": cpu_ms(redis.proc.pid), "postgres": sum(cpu_ms(p) for p in pg_pids),
                       "client": cpu_ms(os.getpid())},
            "sql_statements": metric_sum(ports, "farm_sql_statements_total") + ledger.sql_counts.statements,
            "sql_transactions": metric_sum(ports, "farm_sql_transactions_total") + ledger.sql_counts.transactions,
            "pg_transactions": float(xacts or 0) - watcher.sql_counts.transactions,
            "redis_commands": float(calls),
        }

    def delta(a: dict, b: dict) -> dict:
        return {"cpu_ms": {k: b["cpu_ms"][k] - a["cpu_ms"][k] for k in a["cpu_ms"]},
                **{k: b[k] - a[k] for k in ("sql_statements", "sql_transactions", "pg_transactions",
                                            "redis_commands")}, "seconds": b["t"] - a["t"]}

    def scaled(d: dict, by: float) -> dict:
        return {"cpu_ms": {k: round(v / by, 3) for k, v in d["cpu_ms"].items()},
                **{k: round(d[k] / by, 4) for k in ("sql_statements", "sql_transactions", "pg_transactions",
                                                    "redis_commands")}}

    try:
        deadline = time.monotonic() + 180
        while len([w for w in ledger.workers() if w.state == "active"]) < args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.2)
        servers.wait_until(lambda: _all_up(ports), 60, what="the workers' metrics endpoints")
        time.sleep(5.0)  # past start-up: registration, first heartbeats, subscriptions
        a = snapshot()
        time.sleep(args.idle_s)
        b = snapshot()
        idle = delta(a, b)
        planned = plan([PromptRow(JobRequest(prompt="cost"))], JobRequest(), variants=args.images, seed=1,
                       catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0))
        result = submit(ledger, publisher, planned, micro_batch=args.micro_batch)
        assert result.to_render == args.images, "the premise: every image renders"
        while watcher.batch_counts(result.batch)["succeeded"] < args.images:
            time.sleep(0.25)
        c = snapshot()
        busy = delta(b, c)
    finally:
        supervisor.terminate()
        supervisor.wait(60)
        redis.proc.terminate()
        ledger.close()
        watcher.close()
        publisher.close()
    idle_per_s = scaled(idle, idle["seconds"])
    busy_minus_idle = {"cpu_ms": {k: busy["cpu_ms"][k] - idle["cpu_ms"][k] * busy["seconds"] / idle["seconds"]
                                  for k in busy["cpu_ms"]},
                       **{k: busy[k] - idle[k] * busy["seconds"] / idle["seconds"]
                          for k in ("sql_statements", "sql_transactions", "pg_transactions", "redis_commands")}}
    report = {
        "benchmark": "cost", "workers": args.workers, "images": args.images, "sleep_s": args.sleep,
        "micro_batch": args.micro_batch, "batch_seconds": round(busy["seconds"], 2),
        "images_per_s": round(args.images / busy["seconds"], 2),
        "per_image": scaled(busy, args.images),
        "per_image_without_idle": scaled(busy_minus_idle, args.images),
        "idle_fleet_per_s": idle_per_s,
        "idle_per_worker_per_s": scaled(idle, idle["seconds"] * args.workers),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _all_up(ports: list[int]) -> bool:
    try:
        metric_sum(ports, "farm_sql_statements_total")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
