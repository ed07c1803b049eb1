"""The HTTP API's cost (issue 23), measured against the library API in the same run.

1. Submitting 10,000 jobs (one batch, a seed axis) through ``POST /v1/batches`` against
   ``Farm.submit_plan(Farm.plan(...))`` of the same submission in this process, alternating,
   fresh seeds each time, with no workers (the jobs stay queued: the submission is what is timed).
2. ``GET /v1/batches/{id}`` latency, p50/p99, with 50 concurrent pollers while sleep workers
   render a batch.
3. The server's CPU per image over that render (its process's user + system time, from /proc,
   divided by the images rendered meanwhile).

PostgreSQL and Redis are real, started here; the server is a real ``farm serve`` on a loopback port.

    .venv/bin/python bench/service.py [--jobs 10000] [--rounds 3] [--pollers 50]
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--render-images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "service.json"))
    args = parser.parse_args()

    import httpx

    import farm
    from tests import servers

    work = Path(tempfile.mkdtemp(prefix="farm-service-"))
    pg = servers.start_postgres(work / "pg")
    redis = servers.start_redis(work / "redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_DATABASE_URL=pg.new_database("service"), FARM_BROKER_URL=redis.url,
               FARM_RENDERER="sleep:0.02", FARM_QUEUE="servicebench", FARM_DEFAULT_MODEL="tiny-sd")
    os.environ.update({k: v for k, v in env.items() if k.startswith("FARM_")})
    subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    key = json.loads(subprocess.run([sys.executable, "-m", "farm.cli", "keys", "create", "--tenant", "bench",
                                     "--json"], env=env, cwd=ROOT, check=True, capture_output=True,
                                    text=True).stdout)["key"]
    port = servers.free_port()
    log = open(work / "server.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "farm.cli", "serve", "--port", str(port), "--log-level",
                               "warning"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
    local = farm.Farm.connect(env)
    workers = None
    try:
        servers.wait_until(lambda: _up(url), 60, what="farm serve")
        # 1. submission: HTTP against the library API, alternating, fresh seeds
        client.post("/v1/batches", json={"prompt": "warm", "model": "tiny-sd", "seeds": "0-9"}).raise_for_status()
        local.submit_plan(local.plan("warm", model="tiny-sd", seeds="10-19"), tenant="bench")
        http_s, api_s = [], []
        for round_ in range(args.rounds):
            first = 1_000_000 * (round_ + 1)
            seeds = f"{first}-{first + args.jobs - 1}"
            started = time.perf_counter()
            answer = client.post("/v1/batches", json={"prompt": "a red circle", "model": "tiny-sd", "seeds": seeds})
            answer.raise_for_status()
            http_s.append(time.perf_counter() - started)
            assert answer.json()["jobs"] == args.jobs and answer.json()["to_render"] == args.jobs
            seeds = f"{first + 500_000}-{first + 500_000 + args.jobs - 1}"
            started = time.perf_counter()
            result = local.submit_plan(local.plan("a red circle", model="tiny-sd", seeds=seeds), tenant="bench")
            api_s.append(time.perf_counter() - started)
            assert result.jobs == args.jobs and result.to_render == args.jobs
            print(f"round {round_}: HTTP {http_s[-1]:.2f} s, library API {api_s[-1]:.2f} s", flush=True)
        # drop the queued submissions: the render below is the only work
        for summary in local.batches(100):
            local.cancel(summary.batch.id)
        # 2 and 3. pollers while workers render
        workers = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", str(args.workers),
                                    "--models", "tiny-sd"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        servers.wait_until(lambda: len(local.workers()) >= args.workers, 60, what="workers")
        batch = client.post("/v1/batches", json={"prompt": "a blue square", "model": "tiny-sd",
                                                 "seeds": f"5000000-{5000000 + args.render_images - 1}"}).json()["batch"]
        latencies: list[float] = []
        stop = threading.Event()
        lock = threading.Lock()

        def poll():
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as own:
                while not stop.is_set():
                    started = time.perf_counter()
                    own.get(f"/v1/batches/{batch}").raise_for_status()
                    with lock:
                        latencies.append((time.perf_counter() - started) * 1000)

        cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
        threads = [threading.Thread(target=poll, daemon=True) for _ in range(args.pollers)]
        for thread in threads:
            thread.start()
        while client.get(f"/v1/batches/{batch}").json()["done"] < args.render_images:
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(30)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        for proc in (workers, server):
            if proc is not None:
                servers.terminate(proc)
        client.close()
        local.close()
        redis.stop()
        pg.stop()
    result = {
        "benchmark": "service", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "submit": {"jobs": args.jobs, "rounds": args.rounds, "http_s": [round(x, 3) for x in http_s],
                   "library_api_s": [round(x, 3) for x in api_s],
                   "ratio_http_over_api": round(statistics.median(http_s) / statistics.median(api_s), 3),
                   "target": "at most 1.5x"},
        "status_polling": {"pollers": args.pollers, "requests": len(latencies),
                           "p50_ms": round(statistics.median(latencies), 2),
                           "p99_ms": round(percentile(latencies, 0.99), 2),
                           "requests_per_s": round(len(latencies) / elapsed, 1),
                           "while": f"{args.workers} sleep workers rendered {args.render_images} images (20 ms each)"},
        "server_cpu": {"seconds": round(cpu, 3), "images": args.render_images,
                       "ms_per_image": round(1000 * cpu / args.render_images, 3),
                       "note": "includes answering the pollers' requests"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
