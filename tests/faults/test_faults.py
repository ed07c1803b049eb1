"""Fault injection with real worker processes, a real Redis and the S3 server: no job lost, none
rendered twice. Timings are randomised (the seed is printed so a failure can be replayed).
The figures each test prints (-s) are the ones the closing notes report."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests import servers
from tests.faults.harness import ROOT, FaultFarm, FlakyS3Proxy, SilentProxy, kill_randomly

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.workers]
SEED = int(os.environ.get("FARM_FAULT_SEED") or random.SystemRandom().randrange(10**6))


def report(name: str, **figures) -> None:
    print(f"\nFAULTS {name} seed={SEED} " + json.dumps(figures, sort_keys=True))


@pytest.fixture
def redis(tmp_path):
    server = servers.start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def fault_farm(tmp_path, redis):
    farms = []

    def make(**kwargs):
        farm = FaultFarm(tmp_path, redis.url, **kwargs)
        farms.append(farm)
        return farm

    yield make
    for farm in farms:
        farm.close()


def test_kill_9_worker_processes_mid_job(fault_farm):
    farm = fault_farm(seconds=0.3, workers=2)
    farm.start()
    batch = farm.submit("kill the renderer", 40)["batch"]
    rng = random.Random(SEED)
    kills = kill_randomly(farm.worker_pids, 20, rng, between=(0.3, 1.0))
    started = time.monotonic()
    farm.wait_done(batch, 40, timeout=240)
    audit = farm.audit(batch)
    report("kill9_worker", faults=len(kills), recovery_s=round(time.monotonic() - started, 1), **audit)
    assert len(kills) == 20
    assert (audit["lost"], audit["duplicate_outputs"], audit["artifacts"]) == (0, 0, 40)


def test_kill_9_the_supervisor_and_restart_it(fault_farm):
    farm = fault_farm(seconds=0.3, workers=2)
    farm.start()
    batch = farm.submit("kill the supervisor", 40)["batch"]
    rng = random.Random(SEED + 1)
    kills = 0
    for _ in range(20):
        time.sleep(rng.uniform(0.5, 1.5))
        farm.supervisor.send_signal(signal.SIGKILL)  # its workers die with it (PR_SET_PDEATHSIG)
        farm.supervisor.wait()
        kills += 1
        servers.wait_until(lambda: not farm.worker_pids(), 10, what="orphans to die")
        farm.start()  # what a fleet's restart policy does
    started = time.monotonic()
    farm.wait_done(batch, 40, timeout=240)
    audit = farm.audit(batch)
    report("kill9_supervisor", faults=kills, recovery_s=round(time.monotonic() - started, 1), **audit)
    assert (audit["lost"], audit["duplicate_outputs"], audit["artifacts"]) == (0, 0, 40)


def test_sigterm_mid_job_requeues_within_seconds(fault_farm):
    farm = fault_farm(seconds=5.0, workers=1)
    farm.start()
    batch = farm.submit("long job", 1)["batch"]
    servers.wait_until(lambda: farm.counts(batch).get("running"), 30, what="the job to start")
    time.sleep(random.Random(SEED).uniform(0.2, 2.0))
    signalled = time.monotonic()
    assert farm.stop(signal.SIGTERM, timeout=30) == 0
    state = servers.wait_until(lambda: next(iter(set(farm.counts(batch)) - {"running"}), None), 10,
                               what="the job to be requeued or done")
    requeued_after = time.monotonic() - signalled
    farm.start()
    farm.wait_done(batch, 1, timeout=60)
    audit = farm.audit(batch)
    outcomes = [o for (o,) in farm.sql("select outcome from attempts order by id")]
    report("sigterm", state_after_signal=state, requeued_after_s=round(requeued_after, 2), outcomes=outcomes, **audit)
    assert state in ("queued", "succeeded") and requeued_after < 10
    assert (audit["lost"], audit["duplicate_outputs"]) == (0, 0)


@pytest.mark.parametrize("fault", ["restart", "flush"])
def test_redis_killed_or_flushed_during_a_200_job_burst(tmp_path, fault):
    port = servers.free_port()
    redis = servers.start_redis(tmp_path / "redis", port=port)
    farm = FaultFarm(tmp_path, redis.url, seconds=0.02, workers=2)
    try:
        farm.start()
        batch = farm.submit("burst", 200)["batch"]
        servers.wait_until(lambda: farm.counts(batch).get("succeeded", 0) >= 40, 60, what="the burst to get going")
        faulted = time.monotonic()
        if fault == "restart":
            redis.proc.send_signal(signal.SIGKILL)  # no persistence: every queued message is gone
            redis.proc.wait()
            time.sleep(random.Random(SEED).uniform(0.5, 2.0))
            redis = servers.start_redis(tmp_path / "redis2", port=port)
        else:
            redis.client().flushall()
        farm.wait_done(batch, 200, timeout=240)
        audit = farm.audit(batch)
        report(f"redis_{fault}", recovery_s=round(time.monotonic() - faulted, 1), **audit)
        assert (audit["lost"], audit["duplicate_outputs"], audit["artifacts"]) == (0, 0, 200)
    finally:
        farm.close()
        redis.stop()


def test_a_broker_connection_silent_past_its_socket_timeout(tmp_path, redis):
    """Half-open for longer than the broker connection's socket timeout (farm.fleet.dispatch: 30 s), so
    the worker's reads and acks time out mid-silence and its connection must be recovered; 10 s
    more than that timeout is enough for it to fire (the test once waited a fixed 60 s)."""
    from farm.config import load_config
    from farm.fleet.dispatch import celery_settings

    proxy = SilentProxy(redis.port)
    farm = FaultFarm(tmp_path, f"redis://127.0.0.1:{proxy.port}/0", seconds=0.05, workers=1)
    socket_timeout = celery_settings(load_config(farm.env), farm.env["FARM_BROKER_URL"])[
        "broker_transport_options"]["socket_timeout"]
    silence = socket_timeout + 10
    try:
        farm.start()
        batch = farm.submit("half-open", 60)["batch"]
        servers.wait_until(lambda: farm.counts(batch).get("succeeded", 0) >= 10, 60, what="consuming to start")
        proxy.silent.set()
        before = farm.counts(batch).get("succeeded", 0)
        time.sleep(silence)
        proxy.silent.clear()
        resumed = time.monotonic()
        farm.wait_done(batch, 60, timeout=180)
        audit = farm.audit(batch)
        report("silent", silence_s=silence, done_before_silence=before,
               recovery_s=round(time.monotonic() - resumed, 1), **audit)
        assert "Timeout reading from socket" in farm.log_text(), "the silence never reached the socket timeout"
        assert (audit["lost"], audit["duplicate_outputs"]) == (0, 0)
    finally:
        farm.close()
        proxy.close()


def test_a_poison_job_runs_max_attempts_then_fails(fault_farm):
    farm = fault_farm(seconds=0.2, workers=2)
    farm.start()
    good = farm.submit("fine", 10)["batch"]
    poison = farm.submit("POISON pill", 1)["batch"]
    farm.wait_done(poison, 1, timeout=180)
    farm.wait_done(good, 10, timeout=120)
    [(state, error)] = farm.sql("select state, last_error from jobs where batch_id = :b", b=poison)
    executions = farm.sql("select count(*) from attempts a join jobs j on j.id = a.job_id where j.batch_id = :b",
                          b=poison)[0][0]
    audit = farm.audit(good)
    report("poison", executions=executions, state=state, error=error, others=audit)
    assert (state, executions) == ("failed", 3) and "worker lost 3 times" in error
    assert (audit["lost"], audit["duplicate_outputs"]) == (0, 0)


def redeliver_unacked(client) -> int:
    """What kombu's Redis transport does once a delivered message stays unacked past the
    visibility timeout: put it back on its queue (kombu only checks every tenth poll, which takes
    minutes, so the test does it at once)."""
    count = 0
    for tag, raw in client.hgetall("unacked").items():
        message, _exchange, routing_key = json.loads(raw)
        priority = message.get("properties", {}).get("priority") or 0
        from farm.fleet.dispatch import KOMBU_SEP

        client.lpush(f"{routing_key}{KOMBU_SEP}{priority}" if priority else routing_key, json.dumps(message))
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
        count += 1
    return count


def test_a_job_longer_than_the_visibility_timeout_renders_once(fault_farm, redis):
    # 10 s is the shortest visibility timeout the config takes; the job renders 16 s, so the second
    # delivery (at 11 s) reaches the other worker while the first still renders, which is checked
    farm = fault_farm(seconds=16.0, workers=2, extra={"FARM_VISIBILITY_TIMEOUT": "10", "FARM_JOB_TIME_LIMIT": "9",
                                                        "FARM_LEASE_S": "6"})
    farm.start()
    batch = farm.submit("longer than the visibility timeout", 1)["batch"]
    servers.wait_until(lambda: farm.counts(batch).get("running"), 30, what="the job to start")
    time.sleep(11)  # past the visibility timeout (and the 6 s lease, renewed), still rendering
    redelivered = redeliver_unacked(redis.client())
    farm.wait_for_log("'skipped': 1", 30, what="the second delivery to be skipped")
    still_rendering = farm.counts(batch)
    farm.wait_done(batch, 1, timeout=120)
    audit = farm.audit(batch)
    skipped = farm.log_text().count("'skipped': 1")
    report("visibility", redelivered=redelivered, second_delivery_skipped=skipped, **audit)
    assert redelivered == 1 and skipped == 1
    assert still_rendering == {"running": 1}, "the second delivery came after the first had finished"
    assert (audit["lost"], audit["duplicate_outputs"], audit["extra_executions"]) == (0, 0, 0)


def test_uploads_through_an_s3_proxy_failing_30_percent(fault_farm, s3_server, s3_bucket):
    proxy = FlakyS3Proxy(s3_server.endpoint, 0.3, seed=SEED)
    try:
        farm = fault_farm(seconds=0.02, workers=2, extra={
            "FARM_STORE_URL": f"s3://{s3_bucket}/flaky", "FARM_S3_ENDPOINT_URL": proxy.endpoint,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
        farm.start()
        batch = farm.submit("flaky storage", 40)["batch"]
        farm.wait_done(batch, 40, timeout=180)
        audit = farm.audit(batch)
        client = s3_server.client()
        mismatched = 0
        import hashlib

        for key, sha in farm.sql("select key, sha256 from artifacts"):
            data = client.get_object(Bucket=s3_bucket, Key=f"flaky/{key}")["Body"].read()
            mismatched += hashlib.sha256(data).hexdigest() != sha
        report("s3_30pct", proxy=proxy.stats, mismatched=mismatched, **audit)
        assert proxy.stats["failed"] > 0
        assert (audit["lost"], audit["duplicate_outputs"], audit["artifacts"], mismatched) == (0, 0, 40, 0)
    finally:
        proxy.close()


def test_one_idempotency_key_submitted_100_times_concurrently(fault_farm):
    farm = fault_farm(seconds=0.02, workers=2)
    script = ("import json\n"
              "from concurrent.futures import ThreadPoolExecutor\n"
              "import farm\n"
              "def one(_):\n"
              "    with farm.Farm.connect() as client:  # the library API, configured by FARM_* like the CLI\n"
              "        return client.submit('same key', variants=4, seed=7, key='k-100')\n"
              "with ThreadPoolExecutor(25) as pool:\n"
              "    print(json.dumps(sorted(set(pool.map(one, range(50))))))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=farm.env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    batches = set()
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        batches |= set(json.loads(out))
    [batch] = batches
    farm.start()
    farm.wait_done(batch, 4, timeout=60)
    audit = farm.audit(batch)
    report("idempotency_100", submissions=100, batches=len(batches), **audit)
    assert farm.sql("select count(*) from batches")[0][0] == 1
    assert (audit["jobs"], audit["lost"], audit["duplicate_outputs"], audit["extra_executions"]) == (4, 0, 0, 0)


def test_cordon_and_drain_a_worker_remotely(fault_farm):
    farm = fault_farm(seconds=0.1, workers=1)
    farm.start()
    [(name,)] = servers.wait_until(lambda: farm.sql("select name from workers"), 30, what="the worker to register")
    farm.cli("workers", "cordon", name)
    # the worker notices within its maintenance interval (1 s here) and its consumer stops
    farm.wait_for_log("Canceling queue faults.tiny-sd", 30, what="the worker to stop consuming")
    batch = farm.submit("wait while cordoned", 3)["batch"]
    time.sleep(2)  # a consuming worker takes a message at once and renders it in 0.1 s
    assert farm.counts(batch) == {"queued": 3}
    farm.cli("workers", "uncordon", name)
    farm.wait_done(batch, 3, timeout=60)
    slow = farm.submit("drain me", 1, 9, "--model", "tiny-sd")["batch"]
    servers.wait_until(lambda: farm.counts(slow), 10, what="the job")
    farm.cli("workers", "drain", name)
    servers.wait_until(lambda: farm.supervisor.poll() is not None or not farm.worker_pids(), 60,
                       what="the drained worker to stop")
    assert farm.sql("select state from workers")[0][0] in ("draining", "stopped")
    audit = farm.audit(batch)
    assert (audit["lost"], audit["duplicate_outputs"]) == (0, 0)


def test_metrics_endpoint_after_a_batch(fault_farm):
    import urllib.request

    port = servers.free_port()
    farm = fault_farm(seconds=0.05, workers=1, extra={"FARM_METRICS_PORT": str(port)})
    farm.start()
    batch = farm.submit("measured", 4)["batch"]
    farm.wait_done(batch, 4, timeout=60)

    def scrape():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return text if 'farm_jobs_total{outcome="succeeded"' in text or "farm_jobs_total{" in text else None

    text = servers.wait_until(scrape, 30, what="the metrics endpoint")
    for name in ("farm_jobs_total", "farm_stage_seconds_bucket", "farm_micro_batch_size_bucket",
                 "farm_resident_models", "farm_gpu_memory_bytes"):
        assert name in text, name
    succeeded = [line for line in text.splitlines() if line.startswith("farm_jobs_total") and 'outcome="succeeded"' in line]
    assert succeeded and float(succeeded[0].split()[-1]) == 4.0


def test_metrics_count_the_sql_a_worker_sends(fault_farm):
    """What a worker costs the central ledger, per worker: statements and transactions."""
    import urllib.request

    port = servers.free_port()
    farm = fault_farm(seconds=0.02, workers=1, extra={"FARM_METRICS_PORT": str(port)})
    farm.start()

    def counts():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return None  # the worker is still starting
        values = {line.split("{")[0]: float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith(("farm_sql_statements_total", "farm_sql_transactions_total"))}
        return values if len(values) == 2 else None

    before = servers.wait_until(counts, 30, what="the metrics endpoint")
    batch = farm.submit("counted", 8)["batch"]
    farm.wait_done(batch, 8, timeout=60)
    after = counts()
    # each image is at least a claim and a completion
    assert after["farm_sql_transactions_total"] - before["farm_sql_transactions_total"] >= 2
    assert after["farm_sql_statements_total"] - before["farm_sql_statements_total"] >= 8 * 3


def test_json_logs_carry_the_worker(fault_farm):
    farm = fault_farm(seconds=0.05, workers=1, extra={"FARM_LOG_FORMAT": "json"})
    farm.start()
    batch = farm.submit("logged", 2)["batch"]
    farm.wait_done(batch, 2, timeout=60)
    farm.stop()
    lines = [line for line in (farm.tmp / "workers.log").read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert any("succeeded" in e["message"] and e["worker"].startswith("farm-cpu0@") for e in entries)
    assert all({"ts", "level", "logger", "worker", "message"} <= set(e) for e in entries)


def test_flower_lists_the_running_workers(fault_farm, redis, tmp_path):
    import shutil
    import urllib.request

    celery = shutil.which("celery", path=os.path.dirname(sys.executable))
    pytest.importorskip("flower")
    farm = fault_farm(seconds=0.05, workers=2)
    farm.start()
    port = servers.free_port()
    flower = subprocess.Popen([celery, "--broker", redis.url, "flower", f"--port={port}", "--address=127.0.0.1"],
                              env={**farm.env, "FLOWER_UNAUTHENTICATED_API": "true"},
                              stdout=open(tmp_path / "flower.log", "wb"), stderr=subprocess.STDOUT)
    try:
        def workers():
            try:
                data = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers?refresh=1",
                                                         timeout=10).read())
            except OSError:
                return None
            names = sorted(data)
            return names if len(names) == 2 else None

        names = servers.wait_until(workers, 60, interval=1, what="Flower to list the workers")
        report("flower", workers=names)
        assert all(n.startswith("farm-cpu") for n in names)
    finally:
        flower.terminate()
        flower.wait(10)
