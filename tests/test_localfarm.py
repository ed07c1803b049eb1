"""The local farm's pure parts: device lists and per-device pinning."""

import pytest

from farm.config import load_config
from farm.errors import InputError
from farm.fleet.localfarm import parse_devices, redis_socket_path, worker_slots


def test_parse_devices():
    assert parse_devices("0,1", None) == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu", None) == ["cpu"]
    assert parse_devices(None, 3) == ["cpu", "cpu", "cpu"]
    assert parse_devices(None, None) == ["cpu"]
    for bad in ("0,0", "gpu1", "-1"):
        with pytest.raises(InputError, match="^devices: "):
            parse_devices(bad, None)
    with pytest.raises(InputError, match="^workers: "):
        parse_devices(None, 0)


def test_each_worker_is_pinned_to_its_device(tmp_path):
    cfg = load_config({"FARM_HOME": str(tmp_path)})
    gpu0, gpu3 = worker_slots(cfg, ["cuda:0", "cuda:3"], "redis://x")
    assert gpu0.env["CUDA_VISIBLE_DEVICES"] == "0" and gpu3.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert gpu3.name.startswith("farm-gpu3@") and gpu3.env["FARM_DEVICE"] == "cuda:3"
    cpu0, cpu1 = worker_slots(cfg, ["cpu", "cpu"], "redis://x", prefix="bench")
    assert cpu0.env["CUDA_VISIBLE_DEVICES"] == "" and cpu0.name.startswith("bench-cpu0@")
    assert cpu1.name.startswith("bench-cpu1@") and int(cpu1.env["FARM_TORCH_THREADS"]) >= 1


def test_long_farm_homes_get_a_short_socket_path(tmp_path):
    deep = tmp_path / ("d" * 120)
    path = redis_socket_path(load_config({"FARM_HOME": str(deep)}))
    assert len(str(path)) <= 100
    assert path == redis_socket_path(load_config({"FARM_HOME": str(deep)}))  # stable


def test_a_supervisor_watches_the_private_redis_only(tmp_path):
    from farm.config import load_config
    from farm.fleet.localfarm import PRIVATE_REDIS_ENV, watches_private_redis

    embedded = load_config({"FARM_HOME": str(tmp_path)})
    theirs = load_config({"FARM_HOME": str(tmp_path), "FARM_BROKER_URL": "redis://redis.example:6379/0"})
    assert watches_private_redis(embedded, {})  # `farm worker` in the foreground started it
    assert not watches_private_redis(theirs, {})  # the operator's Redis is the operator's to run
    assert watches_private_redis(theirs, {PRIVATE_REDIS_ENV: "1"})  # `farm up` named its socket


def test_a_dead_private_redis_is_started_again_once(tmp_path):
    from farm.config import load_config
    from farm.fleet.localfarm import heal_private_redis, redis_alive, start_private_redis, stop_redis

    cfg = load_config({"FARM_HOME": str(tmp_path / "h")})
    try:
        line = heal_private_redis(cfg)
        assert line and line.startswith("[farm] the private Redis died; restarted it on ") and redis_alive(cfg)
        assert heal_private_redis(cfg) is None and start_private_redis(cfg) is False  # alive: left alone
    finally:
        stop_redis(cfg)
    assert not redis_alive(cfg)
