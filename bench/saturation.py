"""The ceiling of one ledger and one broker: bookkeeping images/s with renders that cost nothing.

Simulated workers (processes) do exactly what a worker's hot path does to the central services for
each micro-batch, as fast as they can, with no render and no image encoding: take a message off
the model's Redis queue (the list kombu keeps for it, every priority level), claim its jobs in the
ledger (one transaction: ``Ledger.claim``), and complete them with their artifacts (one
transaction: ``Ledger.complete_many``). The jobs are submitted first through the real producer
(``farm.fleet.producer.submit``: the batch in one transaction, micro-batches published to Redis), and
that submission is timed too.

Reported for each worker count: images/s of bookkeeping, SQL transactions per image, CPU seconds of
PostgreSQL, Redis and the simulated workers per 1,000 images, and the projected fleet one
PostgreSQL primary serves at ``--gpu-rate`` images/s per GPU (the ceiling / the rate). What this
leaves out, on purpose: Celery's own message acknowledgement (two or three Redis commands per
message, no SQL), heartbeats and maintenance (their idle cost is bench/cost.py's), the store.

    .venv/bin/python bench/saturation.py [--workers 1,2,4,8] [--images 8000] [--micro-batch 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cost import children, cpu_ms  # noqa: E402


def queue_keys(base: str, model: str) -> list[str]:
    """The kombu lists of one model's queue, highest priority first (farm.fleet.dispatch.BrokerLayout)."""
    from farm.fleet.dispatch import KOMBU_SEP
    from farm.jobs.states import MAX_PRIORITY

    queue = f"{base}.{model}"
    return [queue if level == 0 else f"{queue}{KOMBU_SEP}{level}" for level in range(MAX_PRIORITY, -1, -1)]


def simulated_worker(database_url: str, redis_url: str, keys: list[str], name: str, ready, go, done, stop) -> None:
    """Claim and complete micro-batches until the queue stays empty and ``stop`` is set."""
    import redis

    from farm.fleet.dispatch import BrokerLayout
    from farm.ledger import Artifact, Completion, Ledger

    ledger = Ledger(database_url, auto_migrate=False)
    client = redis.Redis.from_url(redis_url)
    ledger.active_workers()  # connected and warm before the clock starts
    client.ping()
    with ready.get_lock():
        ready.value += 1
    go.wait()
    while True:
        popped = client.brpop(keys, timeout=0.2)
        if popped is None:
            if stop.is_set():
                break
            continue
        ids: set[int] = set()
        BrokerLayout._job_ids_of(popped[1], ids)
        claims = ledger.claim(sorted(ids), worker=name, device="sim", lease_s=60)
        completions = [
            Completion(c.job_id, c.token,
                       Artifact(store_url="file:///dev/null", key=f"sim/{c.job_id}.png", sha256="0" * 64, bytes=1,
                                width=c.spec.width, height=c.spec.height, content_type="image/png"),
                       {"denoise_ms": 0.0, "total_ms": 0.0}, len(claims), {"device": "sim"})
            for c in claims]
        completed = sum(ledger.complete_many(completions))
        with done.get_lock():
            done.value += completed
    ledger.close()


def run_round(pg_uri: str, redis, postmaster: int, workers: int, images: int, micro_batch: int, seed: int) -> dict:
    from farm.config import load_config
    from farm.fleet.dispatch import Publisher
    from farm.fleet.producer import submit
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger

    env = {"FARM_DATABASE_URL": pg_uri, "FARM_BROKER_URL": redis.url, "FARM_QUEUE": "sat",
           "FARM_HOME": tempfile.mkdtemp(prefix="farm-sat-home-")}
    cfg = load_config(env)
    ledger = Ledger(pg_uri)
    publisher = Publisher(cfg, redis.url)
    xacts_sql = "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()"

    def pg_transactions() -> float:
        with ledger.engine.connect() as conn:
            return float(conn.exec_driver_sql(xacts_sql).scalar() or 0)

    def redis_commands() -> float:
        return float(sum(v["calls"] for k, v in redis.client().info("commandstats").items()
                         if k.startswith("cmdstat_")))

    planned = plan([PromptRow(JobRequest(prompt="saturation"))], JobRequest(), variants=images, seed=seed,
                   catalog=Catalog(), default_model="tiny-sd", rng=random.Random(seed))
    started = time.perf_counter()
    result = submit(ledger, publisher, planned, micro_batch=micro_batch, force=True)
    submit_s = time.perf_counter() - started
    assert result.to_render == images, "the premise: every job is new and goes through the queue"

    ctx = multiprocessing.get_context("spawn")
    ready, done, go, stop = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=simulated_worker, args=(pg_uri, redis.url, queue_keys("sat", "tiny-sd"), f"sim{i}",
                                                        ready, go, done, stop)) for i in range(workers)]
    for p in procs:
        p.start()
    while ready.value < workers:  # imports and connections are not bookkeeping
        time.sleep(0.05)
        if not all(p.is_alive() for p in procs):
            raise RuntimeError("a simulated worker died while starting")
    startup_cpu = {p.pid: cpu_ms(p.pid) for p in procs}
    pg_pids = [postmaster, *children(postmaster)]
    before = {"pg": sum(cpu_ms(p) for p in pg_pids), "redis": cpu_ms(redis.proc.pid),
              "pg_tx": pg_transactions(), "redis_cmds": redis_commands()}
    started = time.perf_counter()
    go.set()
    while done.value < images:
        time.sleep(0.02)
        if not any(p.is_alive() for p in procs):
            raise RuntimeError("the simulated workers died")
    elapsed = time.perf_counter() - started
    worker_cpu = sum(cpu_ms(p.pid) - startup_cpu[p.pid] for p in procs)
    after = {"pg": sum(cpu_ms(p) for p in [postmaster, *children(postmaster)]), "redis": cpu_ms(redis.proc.pid),
             "redis_cmds": redis_commands()}
    stop.set()
    for p in procs:
        p.join(30)
    time.sleep(1.0)  # PostgreSQL's statistics reach pg_stat_database when a backend ends or idles
    after["pg_tx"] = pg_transactions() - 1  # less the reading itself
    counts = ledger.batch_counts(result.batch)
    assert counts["succeeded"] == images, counts  # every job claimed and completed, none twice
    ledger.close()
    publisher.close()
    per_k = 1000 / images
    return {
        "workers": workers, "images": images, "seconds": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 1),
        "submit_images_per_s": round(images / submit_s, 1),
        "pg_transactions_per_image": round((after["pg_tx"] - before["pg_tx"]) / images, 3),
        "redis_commands_per_image": round((after["redis_cmds"] - before["redis_cmds"]) / images, 3),
        "cpu_s_per_1000_images": {"postgres": round((after["pg"] - before["pg"]) / 1000 * per_k, 3),
                                  "redis": round((after["redis"] - before["redis"]) / 1000 * per_k, 3),
                                  "workers": round(worker_cpu / 1000 * per_k, 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--gpu-rate", type=float, default=10.0, help="images/s one GPU renders (4-step SDXL, H100)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "saturation.json"))
    args = parser.parse_args()

    import pgserver

    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-saturation-"))
    pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
    redis = servers.start_redis(work / "redis")
    from farm.ledger.ledger import make_engine, upgrade

    schema = make_engine(pg.get_uri())
    upgrade(schema)
    schema.dispose()
    rounds = []
    try:
        for i, workers in enumerate(int(w) for w in args.workers.split(",")):
            rounds.append(run_round(pg.get_uri(), redis, pg.get_pid(), workers, args.images, args.micro_batch,
                                    seed=1000 * (i + 1)))
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        redis.proc.terminate()
    best = max(rounds, key=lambda r: r["images_per_s"])
    report = {
        "benchmark": "saturation", "micro_batch": args.micro_batch, "rounds": rounds,
        "ceiling_images_per_s": best["images_per_s"], "at_workers": best["workers"],
        "gpu_rate": args.gpu_rate, "projected_gpus": int(best["images_per_s"] / args.gpu_rate),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
