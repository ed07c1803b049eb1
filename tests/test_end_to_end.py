"""End to end with real processes: the CLI, real Celery workers, a real Redis, and SQLite + file
store or PostgreSQL + an S3 HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from farm.results.metadata import parse_seed
from tests import servers

ROOT = Path(__file__).resolve().parents[1]


def farm(*args, env, timeout=300, check=True):
    result = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"farm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def png_text(path_or_bytes) -> dict:
    from engine.imaging import read_png_text

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return read_png_text(data)


def pixels(data: bytes):
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.workers
@pytest.mark.redis
def test_farm_run_on_a_fresh_home(farm_env, tmp_path):
    """The README's first command: embedded Redis, SQLite ledger, file store, real workers."""
    out = tmp_path / "out"
    result = farm("run", "--model", "tiny-sd", "--variants", "8", "--seed", "100", "a lighthouse at dusk",
                  "--out", str(out), "--json", env=farm_env)
    report = json.loads(result.stdout)
    assert (report["jobs"], report["succeeded"], report["failed"]) == (8, 8, 0)
    assert [Path(p).name for p in report["outputs"]] == [f"{i:05d}-{100 + i}.png" for i in range(8)]
    seeds = [parse_seed(png_text(p)["parameters"]) for p in report["outputs"]]
    assert seeds == list(range(100, 108))
    record = json.loads(png_text(report["outputs"][3])["farm"])
    assert (record["seed"], record["model"], record["recipe"], record["scheduler"]) == (
        103, "tiny-sd", "lcm-lora", "LCMScheduler")
    assert record["versions"]["torch"] and record["versions"]["diffusers"]

    jobs = json.loads(farm("jobs", "list", "--json", env=farm_env).stdout)
    assert [j["seed"] for j in jobs] == list(range(100, 108))
    for j in jobs:
        assert j["state"] == "succeeded" and j["artifact"] == f"batches/{report['batch']}/{j['index']:05d}-{j['seed']}.png"
        for stage in ("denoise", "vae_decode", "text_encode", "image_encode", "upload", "queue_wait", "total"):
            assert j["timings"][stage] is not None and j["timings"][stage] >= 0, stage
        assert j["timings"]["total"] > 0 and j["timings"]["denoise"] > 0

    # farm run started the farm, so it stopped it again
    home = Path(farm_env["FARM_HOME"])
    assert not (home / "run" / "workers.pid").exists()
    assert not (home / "run" / "redis.sock").exists()

    # the farm's pixels are the pixels of a direct render of the same seed in this process
    from engine.runner import Runner
    from farm.jobs.spec import direct_spec

    runner = Runner(device="cpu", model_cache=Path(farm_env["FARM_MODEL_CACHE"]))
    direct = runner.render([direct_spec(
        prompt="a lighthouse at dusk", seed=103, steps=4, guidance=1.0, width=64, height=64,
        model="tiny-sd", scheduler="LCMScheduler", adapters=[("tiny-sd-lcm-lora", 1.0)])]).pixels[0]
    assert np.array_equal(direct, pixels(Path(report["outputs"][3]).read_bytes()))


@pytest.mark.workers
def test_farm_run_into_s3(farm_env, tmp_path, s3_server, s3_bucket):
    """The same run with FARM_STORE_URL=s3://... stores the objects in the S3 server."""
    env = {**farm_env, **servers.S3_ENV, "FARM_STORE_URL": f"s3://{s3_bucket}/runs",
           "FARM_S3_ENDPOINT_URL": s3_server.endpoint}
    report = json.loads(farm("run", "--model", "tiny-sd", "--variants", "4", "--seed", "100", "a lighthouse at dusk",
                             "--out", str(tmp_path / "out"), "--json", env=env).stdout)
    assert report["succeeded"] == 4
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"runs/batches/{report['batch']}/{i:05d}-{100 + i}.png" for i in range(4)]
    for path in report["outputs"]:  # what farm run copied out is what the bucket holds
        key = f"runs/batches/{report['batch']}/{Path(path).name}"
        assert s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == Path(path).read_bytes()


@pytest.mark.workers
def test_a_hub_model_goes_through_the_real_loader_and_fails_clearly_offline(farm_env, tmp_path):
    """sd15 is a hub id: the worker calls from_pretrained for real; with no hub it fails the jobs
    with the loader's reason instead of hanging, and `farm run` exits 1 saying why."""
    result = farm("run", "--model", "sd15", "--variants", "2", "--size", "64x64", "a lighthouse",
                  "--out", str(tmp_path / "out"), "--json", check=False,
                  env={**farm_env, "HF_HUB_OFFLINE": "1", "FARM_RETRY_BACKOFF_S": "1", "FARM_MAINTENANCE_S": "1"})
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["failed"], report["succeeded"]) == (2, 0)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_server, postgres_server, s3_server, model_cache):
    """Two worker processes against a real Redis (TCP), PostgreSQL and the S3 server."""
    base = tmp_path_factory.mktemp("fleet")
    database = postgres_server.new_database("fleet")
    bucket = "fleet-renders"
    s3_server.client().create_bucket(Bucket=bucket)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(servers.S3_ENV, FARM_HOME=str(base / "home"), FARM_MODEL_CACHE=str(model_cache),
               FARM_BROKER_URL=redis_server.url, FARM_DATABASE_URL=database,
               FARM_STORE_URL=f"s3://{bucket}/farm", FARM_S3_ENDPOINT_URL=s3_server.endpoint,
               FARM_QUEUE="fleet", FARM_MICRO_BATCH="4")
    upgraded = farm("db", "upgrade", env=env)
    from farm.ledger.ledger import head_revision

    assert f"empty -> {head_revision()}" in upgraded.stdout
    log = open(base / "workers.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", "2"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    from farm.ledger import Ledger

    ledger = Ledger(database)
    try:
        servers.wait_until(lambda: len([w for w in ledger.workers() if w.state == "active"]) == 2, 120,
                           what="two workers to register")
        yield {"env": env, "ledger": ledger, "bucket": bucket, "s3": s3_server, "redis": redis_server,
               "proc": proc, "log": base / "workers.log"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        ledger.close()


def wait_batch(fleet, batch: str, timeout: float = 120) -> dict:
    def done():
        status = json.loads(farm("status", batch, "--json", env=fleet["env"]).stdout)
        return status if status["done"] == status["jobs"] else None

    return servers.wait_until(done, timeout, interval=0.3, what=f"batch {batch}")


def queue_drained(fleet) -> bool:
    client = fleet["redis"].client()
    lists = sum(client.llen(k) for k in client.keys("fleet*") if client.type(k) == b"list")
    return lists == 0 and client.hlen("unacked") == 0


@pytest.mark.slow
def test_fleet_renders_into_s3_with_a_postgres_ledger(fleet, tmp_path):
    env = fleet["env"]
    submitted = json.loads(farm("submit", "a harbour at night", "--model", "tiny-sd", "--variants", "6",
                                "--seed", "40", "--json", env=env).stdout)
    assert submitted["jobs"] == 6 and submitted["messages"] == 2  # micro-batches of 4 + 2
    status = wait_batch(fleet, submitted["batch"])
    assert status["counts"]["succeeded"] == 6

    jobs = json.loads(farm("jobs", "list", "--batch", submitted["batch"], "--json", env=env).stdout)
    assert {j["worker"] for j in jobs} <= {w.name for w in fleet["ledger"].workers()}
    s3 = fleet["s3"].client()
    for j in jobs:
        obj = s3.get_object(Bucket=fleet["bucket"], Key=f"farm/{j['artifact']}")
        data = obj["Body"].read()
        assert hashlib.sha256(data).hexdigest() == j["sha256"] == obj["Metadata"]["sha256"]
        assert parse_seed(png_text(data)["parameters"]) == j["seed"]
        assert j["batch_size"] == 4  # padded to the batch bucket

    out = tmp_path / "fetched"
    fetched = json.loads(farm("results", "get", submitted["batch"], "--out", str(out), "--json", env=env).stdout)
    assert len(fetched["outputs"]) == 6 and all(Path(p).stat().st_size > 0 for p in fetched["outputs"])


@pytest.mark.slow
def test_a_duplicate_delivery_renders_nothing_twice(fleet):
    from farm.config import load_config
    from farm.fleet.dispatch import Publisher

    env = fleet["env"]
    submitted = json.loads(farm("submit", "a quiet pier", "--model", "tiny-sd", "--variants", "3", "--seed", "9",
                                "--json", env=env).stdout)
    wait_batch(fleet, submitted["batch"])
    jobs = json.loads(farm("jobs", "list", "--batch", submitted["batch"], "--json", env=env).stdout)
    ids = [j["id"] for j in jobs]
    publisher = Publisher(load_config(env), env["FARM_BROKER_URL"])
    publisher.publish([("tiny-sd", ids), ("tiny-sd", ids[:1])])  # the same job ids delivered again
    publisher.close()
    servers.wait_until(lambda: queue_drained(fleet), 60, what="the duplicates to be consumed")
    again = json.loads(farm("jobs", "list", "--batch", submitted["batch"], "--json", env=env).stdout)
    assert [(j["state"], j["attempts"], j["sha256"]) for j in again] == [
        (j["state"], 1, j["sha256"]) for j in jobs]


RECIPE_ROWS = [
    ("tiny-sd", "lcm-lora", {}), ("tiny-sdxl", "lcm-lora", {}),
    ("tiny-sd-lcm", "lcm", {}), ("tiny-sdxl-lcm", "lcm", {}),
    ("tiny-sdxl", "turbo", {}), ("tiny-sdxl-turbo", "turbo", {}),
    ("tiny-sdxl", "lightning", {"steps": 4}),
    ("tiny-sd", "hyper", {"steps": 2}), ("tiny-sdxl", "hyper", {"steps": 8}),
    ("tiny-sd", "lcm-blend", {}), ("tiny-sdxl", "lcm-blend", {}),
    ("tiny-sd", "plain", {"steps": 10}), ("tiny-sdxl", "plain", {"steps": 10}),
]


@pytest.mark.slow
def test_a_batch_with_every_recipe_renders_through_the_farm(fleet, tmp_path):
    lines = [json.dumps({"prompt": f"a lighthouse, {recipe}", "model": model, "recipe": recipe, **extra})
             for model, recipe, extra in RECIPE_ROWS]
    (tmp_path / "recipes.jsonl").write_text("\n".join(lines) + "\n")
    submitted = json.loads(farm("submit", "--file", str(tmp_path / "recipes.jsonl"), "--seed", "1", "--json",
                                env=fleet["env"]).stdout)
    assert submitted["jobs"] == len(RECIPE_ROWS)
    assert wait_batch(fleet, submitted["batch"])["counts"]["succeeded"] == len(RECIPE_ROWS)
    jobs = json.loads(farm("jobs", "list", "--batch", submitted["batch"], "--json", env=fleet["env"]).stdout)
    samplers = {"lcm-lora": "LCM", "lcm": "LCM", "turbo": "Euler a", "lightning": "Euler", "hyper": "DDIM",
                "lcm-blend": "DPM++ 2S Karras", "plain": "Euler"}
    s3 = fleet["s3"].client()
    for job, (model, recipe, _) in zip(jobs, RECIPE_ROWS):
        assert (job["model"], job["recipe"]) == (model, recipe)
        data = s3.get_object(Bucket=fleet["bucket"], Key=f"farm/{job['artifact']}")["Body"].read()
        assert f"Sampler: {samplers[recipe]}," in png_text(data)["parameters"]


def test_a_decoder_sweep_renders_previews_with_taesd(fleet, tmp_path):
    (tmp_path / "preview.yaml").write_text("prompt: a lighthouse\nmodel: tiny-sd\ndecoder: [full, tiny]\n")
    submitted = json.loads(farm("submit", "--spec", str(tmp_path / "preview.yaml"), "--seed", "5", "--json",
                                env=fleet["env"]).stdout)
    assert submitted["messages"] == 2  # one decoder per pipeline call
    wait_batch(fleet, submitted["batch"])
    jobs = json.loads(farm("jobs", "list", "--batch", submitted["batch"], "--json", env=fleet["env"]).stdout)
    assert [(j["state"], j["decoder"], j["seed"]) for j in jobs] == [("succeeded", "full", 5), ("succeeded", "tiny", 5)]
    s3 = fleet["s3"].client()
    full, tiny = (s3.get_object(Bucket=fleet["bucket"], Key=f"farm/{j['artifact']}")["Body"].read() for j in jobs)
    assert "VAE:" not in png_text(full)["parameters"]
    assert "VAE: TAESD (preview)" in png_text(tiny)["parameters"]
    assert json.loads(png_text(tiny)["farm"])["environment"]["decoder"] == "tiny"
    assert pixels(full).tobytes() != pixels(tiny).tobytes()


@pytest.mark.slow
def test_a_batch_mixing_two_styles_with_lcm_lora_records_each_jobs_weights(fleet, tmp_path):
    weights = [(0.8, 0.3), (0.2, 0.9), (0.0, 0.5), (1.0, 0.0)]
    lines = [json.dumps({"prompt": "a toy robot", "model": "tiny-sd",
                         "adapters": [["tiny-sd-toy", toy], ["tiny-sd-ink", ink]]}) for toy, ink in weights]
    (tmp_path / "styles.jsonl").write_text("\n".join(lines) + "\n")
    submitted = json.loads(farm("submit", "--file", str(tmp_path / "styles.jsonl"), "--seed", "7", "--json",
                                env=fleet["env"]).stdout)
    assert submitted["messages"] == 4  # different weights: different micro-batches
    wait_batch(fleet, submitted["batch"])
    jobs = json.loads(farm("jobs", "list", "--batch", submitted["batch"], "--json", env=fleet["env"]).stdout)
    s3 = fleet["s3"].client()
    images = []
    for job, (toy, ink) in zip(jobs, weights):
        assert job["state"] == "succeeded"
        assert job["adapters"] == [{"name": "tiny-sd-lcm-lora", "weight": 1.0, "role": "accelerator"},
                                   {"name": "tiny-sd-toy", "weight": toy, "role": "style"},
                                   {"name": "tiny-sd-ink", "weight": ink, "role": "style"}]
        data = s3.get_object(Bucket=fleet["bucket"], Key=f"farm/{job['artifact']}")["Body"].read()
        text = png_text(data)
        assert f'Lora weights: "tiny-sd-lcm-lora: 1, tiny-sd-toy: {toy:g}, tiny-sd-ink: {ink:g}"' in text["parameters"]
        assert json.loads(text["farm"])["adapters"] == job["adapters"]
        images.append(pixels(data))
    assert len({img.tobytes() for img in images}) == 4  # the weights change the pixels


@pytest.mark.slow
def test_workers_report_what_they_hold(fleet):
    """Workers report what they hold with their heartbeat (every 10 s), not after every message."""
    def reported():
        workers = fleet["ledger"].workers()
        held = [m for w in workers for m in w.resident_models]
        return "tiny-sd" in held and any(a.startswith("tiny-sd/") for w in workers for a in w.resident_adapters)

    servers.wait_until(reported, 30, interval=0.5, what="workers to report tiny-sd and its adapters")
    assert sum(w.images_rendered for w in fleet["ledger"].workers()) > 0


@pytest.mark.slow
def test_workers_and_stats_agree_with_the_ledger_rows(fleet, tmp_path):
    from sqlalchemy import text

    with fleet["ledger"].engine.connect() as conn:
        per_worker = dict(conn.execute(text(
            "select worker, count(*) from attempts where outcome = 'succeeded' group by worker")).all())
    stats = json.loads(farm("stats", "--since", "1h", "--by", "worker", "--json", env=fleet["env"]).stdout)
    assert {g["group"]: g["images"] for g in stats["groups"]} == per_worker
    overall = json.loads(farm("stats", "--since", "1h", "--json", "--plot", str(tmp_path / "stats.png"),
                              env=fleet["env"]).stdout)["groups"][0]
    assert overall["images"] == sum(per_worker.values()) and overall["stages_ms"]["denoise"]["p50"] > 0
    assert (tmp_path / "stats.png").stat().st_size > 10_000

    def counted():
        shown = json.loads(farm("workers", "--json", env=fleet["env"]).stdout)
        return shown if {w["name"]: w["images_rendered"] for w in shown} == per_worker else None

    shown = servers.wait_until(counted, 30, interval=1, what="workers to report their counts")
    assert all(w["state"] == "active" and w["heartbeat_age_s"] < 30 for w in shown)


@pytest.mark.slow
def test_workers_stop_cleanly_on_sigterm(fleet):
    proc = fleet["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    servers.wait_until(lambda: all(w.state == "stopped" for w in fleet["ledger"].workers()), 30,
                       what="workers to record their shutdown")
