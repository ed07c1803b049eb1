"""Model and adapter registries: validation (pure), the CLI, and s3:// sources fetched once and
verified by sha256."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.errors import InfrastructureError, InputError
from farm.models.registry import adapter_entry, check_source, model_entry
from farm.storage.fetch import fetch_s3


def test_sources(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "lora.safetensors").write_bytes(b"x")
    (tmp_path / "lora.ckpt").write_bytes(b"x")
    assert check_source("stabilityai/sdxl-turbo", cwd=tmp_path) == "stabilityai/sdxl-turbo"
    assert check_source("./model", cwd=tmp_path) == str(tmp_path / "model")
    assert check_source(str(tmp_path / "lora.safetensors"), cwd=tmp_path).endswith("lora.safetensors")
    assert check_source("s3://bucket/loras/toy.safetensors", cwd=tmp_path).startswith("s3://")
    for bad, words in [("./lora.ckpt", "no pickles"), ("./missing", "no such file"), ("builtin:tiny-sd", "reserved"),
                       ("http://x/y", "only s3://"), ("s3://bucket", "s3://BUCKET/KEY"),
                       ("s3://b/a/../../etc", "not allowed"), ("not a hub id", "neither"), ("", "expected")]:
        with pytest.raises(InputError, match=words):
            check_source(bad, cwd=tmp_path)


def test_entries(tmp_path):
    m = model_entry("my-sd15", source="runwayml/sd15-finetune", family="sd15", cwd=tmp_path)
    assert (m.arch, m.native_size, m.kind, m.builtin) == ("sd15", 512, "base", False)
    a = adapter_entry("l4", source="ByteDance/SDXL-Lightning", kind="accelerator", family="sdxl",
                      recipe="lightning", steps=4, weight_name="sdxl_lightning_4step_lora.safetensors", cwd=tmp_path)
    assert (a.arch, a.recipe, a.steps) == ("sdxl", "lightning", 4)
    assert adapter_entry("lcm2", source="a/b", kind="accelerator", family="sd15", cwd=tmp_path).recipe == "lcm-lora"
    cases = [
        (lambda: model_entry("tiny-sd", source="a/b", family="sd15", cwd=tmp_path), "built-in"),
        (lambda: model_entry("Bad Name", source="a/b", family="sd15", cwd=tmp_path), "not a valid name"),
        (lambda: model_entry("m", source="a/b", family="sd2", cwd=tmp_path), "not a family"),  # (sd3 is one now)
        (lambda: model_entry("m", source="a/b", family="sd15", native_size=100, cwd=tmp_path), "multiple of 8"),
        (lambda: model_entry("m", source="a/b", family="flux", native_size=1000, cwd=tmp_path), "multiple of 16"),
        (lambda: adapter_entry("l", source="a/b", kind="accelerator", family="sdxl", recipe="lightning",
                               cwd=tmp_path), "needs --steps"),
        (lambda: adapter_entry("l", source="a/b", kind="accelerator", family="sdxl", recipe="plain",
                               cwd=tmp_path), "accelerators serve"),
        (lambda: adapter_entry("s", source="a/b", kind="style", family="sdxl", steps=4, cwd=tmp_path), "no --recipe"),
        (lambda: adapter_entry("s", source="a/b", kind="style", family="sdxl", weight_name="../x.safetensors",
                               cwd=tmp_path), "weight file name"),
        (lambda: adapter_entry("s", source="a/b", kind="style", family="sdxl", weight_name="x.bin",
                               cwd=tmp_path), "weight file name"),
    ]
    for make, words in cases:
        with pytest.raises(InputError, match=words):
            make()


@pytest.fixture
def lora_file(model_cache) -> Path:
    from engine.sources import resolve

    return Path(resolve("builtin:tiny-sd-toy", model_cache).path) / "pytorch_lora_weights.safetensors"


def test_s3_adapter_is_fetched_once_and_verified(s3_server, s3_bucket, lora_file, tmp_path):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="loras/toy.safetensors", Body=lora_file.read_bytes())
    source = f"s3://{s3_bucket}/loras/toy.safetensors"
    first = fetch_s3(source, tmp_path, name="toy", endpoint_url=s3_server.endpoint)
    assert first.downloaded and first.single_file and first.path.read_bytes() == lora_file.read_bytes()
    again = fetch_s3(source, tmp_path, name="toy", expected_sha256=first.sha256, endpoint_url=s3_server.endpoint)
    assert not again.downloaded and again.path == first.path
    # another machine (an empty cache) fetching an object that changed since it was registered
    client.put_object(Bucket=s3_bucket, Key="loras/toy.safetensors", Body=b"tampered")
    with pytest.raises(InfrastructureError, match="does not match the registered"):
        fetch_s3(source, tmp_path / "other", name="toy", expected_sha256=first.sha256, endpoint_url=s3_server.endpoint)
    assert not (tmp_path / "other" / "s3" / "toy").exists()


def test_s3_model_directory_and_keys_that_escape_the_cache(s3_server, s3_bucket, model_cache, tmp_path):
    from engine.sources import resolve

    client = s3_server.client()
    model_dir = Path(resolve("builtin:tiny-sd", model_cache).path)
    for path in model_dir.rglob("*"):
        if path.is_file():
            client.put_object(Bucket=s3_bucket, Key=f"models/tiny/{path.relative_to(model_dir)}", Body=path.read_bytes())
    fetched = fetch_s3(f"s3://{s3_bucket}/models/tiny", tmp_path, name="tiny-copy", endpoint_url=s3_server.endpoint)
    assert not fetched.single_file and (fetched.path / "unet" / "config.json").exists()
    client.put_object(Bucket=s3_bucket, Key="models/evil/../../../outside.json", Body=b"{}")
    with pytest.raises(InputError, match="escape the cache"):
        fetch_s3(f"s3://{s3_bucket}/models/evil", tmp_path, name="evil", endpoint_url=s3_server.endpoint)
    assert not list(tmp_path.rglob("outside.json"))


def test_registered_s3_lora_renders_like_the_original(s3_server, s3_bucket, lora_file, model_cache, tmp_path,
                                                       monkeypatch):
    from engine.runner import Runner
    from farm.config import load_config
    from farm.jobs.spec import direct_spec
    from farm.ledger import Ledger

    s3_server.client().put_object(Bucket=s3_bucket, Key="styles/toy.safetensors", Body=lora_file.read_bytes())
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", s3_server.endpoint)
    runner = CliRunner()
    added = runner.invoke(cli, ["adapters", "add", "s3-toy", "--source", f"s3://{s3_bucket}/styles/toy.safetensors",
                                "--kind", "style", "--family", "tiny-sd", "--json"], catch_exceptions=False)
    assert added.exit_code == 0, added.stderr
    assert len(json.loads(added.stdout)["sha256"]) == 64
    listed = json.loads(runner.invoke(cli, ["adapters", "list", "--json"]).stdout)
    assert {"s3-toy", "tiny-sd-toy", "lcm-lora-sdxl"} <= {a["name"] for a in listed}
    duplicate = runner.invoke(cli, ["adapters", "add", "s3-toy", "--source", "a/b", "--kind", "style",
                                    "--family", "tiny-sd"])
    assert duplicate.exit_code == 2 and "already registered" in duplicate.stderr

    ledger = Ledger(load_config().database_url)
    worker = Runner(device="cpu", model_cache=tmp_path / "worker-cache", catalog=ledger.catalog,
                    s3_endpoint_url=s3_server.endpoint)

    def job(style):
        return direct_spec(prompt="a boat", seed=1, model="tiny-sd",
                           adapters=[("tiny-sd-lcm-lora", 1.0, "accelerator"), (style, 0.8)])

    from_s3 = worker.render([job("s3-toy")]).pixels[0]
    assert np.array_equal(from_s3, worker.render([job("tiny-sd-toy")]).pixels[0])
    assert (tmp_path / "worker-cache" / "s3" / "s3-toy" / "toy.safetensors").exists()

    removed = runner.invoke(cli, ["adapters", "remove", "s3-toy"])
    assert removed.exit_code == 0
    builtin = runner.invoke(cli, ["models", "remove", "tiny-sd"])
    assert builtin.exit_code == 2 and "built-in" in builtin.stderr
    ledger.close()


def test_models_add_list_and_submit_to_a_registered_model(tmp_path, monkeypatch, model_cache, redis_server):
    from engine.sources import resolve

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_BROKER_URL", redis_server.url)
    monkeypatch.setenv("FARM_QUEUE", "registry-test")
    local = resolve("builtin:tiny-sd", model_cache).path
    runner = CliRunner()
    added = runner.invoke(cli, ["models", "add", "my-tiny", "--source", local, "--family", "sd15", "--arch", "tiny-sd",
                                "--native-size", "64"])
    assert added.exit_code == 0, added.stderr
    models = {m["name"]: m for m in json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)}
    assert models["my-tiny"]["source"] == local and models["tiny-sd"]["builtin"]
    # LCM-LoRA for the arch plugs into the registered fine-tune without anything else registered
    out = runner.invoke(cli, ["submit", "a cat", "--model", "my-tiny", "--json"])
    assert out.exit_code == 0, out.stderr
    jobs = json.loads(runner.invoke(cli, ["jobs", "list", "--json"]).stdout)
    assert jobs[0]["adapters"][0]["name"] == "tiny-sd-lcm-lora"
