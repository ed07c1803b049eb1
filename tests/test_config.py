"""FARM_* configuration: defaults and errors that name the variable."""

from pathlib import Path

import pytest

from farm.config import load_config
from farm.errors import ConfigError


def test_defaults_live_under_the_farm_home(tmp_path):
    cfg = load_config({}, cwd=tmp_path)
    assert cfg.home == tmp_path / ".farm"
    assert cfg.database_url == f"sqlite:///{tmp_path / '.farm' / 'ledger.db'}"
    assert cfg.store_url == (tmp_path / ".farm" / "store").as_uri()
    assert cfg.broker_url is None and cfg.uses_embedded_broker


def test_postgres_urls_use_psycopg3():
    cfg = load_config({"FARM_DATABASE_URL": "postgres://u:p@db/farm"}, cwd=Path("/"))
    assert cfg.database_url == "postgresql+psycopg://u:p@db/farm"


@pytest.mark.parametrize("env, variable", [
    ({"FARM_DATABASE_URL": "mysql://x"}, "FARM_DATABASE_URL"),
    ({"FARM_BROKER_URL": "amqp://x"}, "FARM_BROKER_URL"),
    ({"FARM_STORE_URL": "gs://bucket"}, "FARM_STORE_URL"),
    ({"FARM_STORE_URL": "s3://"}, "FARM_STORE_URL"),
    ({"FARM_S3_ENDPOINT_URL": "ftp://x"}, "FARM_S3_ENDPOINT_URL"),
    ({"FARM_MICRO_BATCH": "lots"}, "FARM_MICRO_BATCH"),
    ({"FARM_MICRO_BATCH": "0"}, "FARM_MICRO_BATCH"),
    ({"FARM_QUEUE": "a queue"}, "FARM_QUEUE"),
    ({"FARM_JOB_TIME_LIMIT": "4000", "FARM_VISIBILITY_TIMEOUT": "3600"}, "FARM_JOB_TIME_LIMIT"),
    ({"FARM_DTYPE": "fp8"}, "FARM_DTYPE"),
    ({"FARM_STORE_OVERLAP": "yes"}, "FARM_STORE_OVERLAP"),
    ({"FARM_IO_THREADS": "0"}, "FARM_IO_THREADS"),
    ({"FARM_TASK_EVENTS": "yes"}, "FARM_TASK_EVENTS"),
    ({"FARM_PREVIEW_DECODERS": "sdxl"}, "FARM_PREVIEW_DECODERS"),
    ({"FARM_PREVIEW_DECODERS": "sd2=/models/taesd2"}, "FARM_PREVIEW_DECODERS"),  # (sd3 is an arch now)
])
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        load_config(env, cwd=Path("/tmp"))
    assert str(info.value).startswith(f"{variable}: ")


def test_adapter_cache_settings():
    cfg = load_config({"FARM_FUSE_ACCELERATOR": "on", "FARM_MAX_ADAPTERS": "3"}, cwd=Path("/tmp"))
    assert (cfg.fuse_accelerator, cfg.max_adapters, cfg.max_adapter_mb) == (True, 3, 2048)
    assert load_config({}, cwd=Path("/tmp")).fuse_accelerator is None
    with pytest.raises(ConfigError, match="^FARM_FUSE_ACCELERATOR: "):
        load_config({"FARM_FUSE_ACCELERATOR": "sometimes"}, cwd=Path("/tmp"))


def test_micro_batch_sizes_per_family_and_resolution():
    cfg = load_config({"FARM_MICRO_BATCH": "8", "FARM_MICRO_BATCH_SIZES": "sdxl@1024=2, sdxl@512=4,sd15=16"},
                      cwd=Path("/tmp"))
    assert cfg.micro_batch_for("sdxl", 1024, 1024) == 2
    assert cfg.micro_batch_for("sdxl", 768, 512) == 4
    assert cfg.micro_batch_for("sdxl", 256, 256) == 8
    assert cfg.micro_batch_for("sd15", 64, 64) == 16
    with pytest.raises(ConfigError, match="^FARM_MICRO_BATCH_SIZES: "):
        load_config({"FARM_MICRO_BATCH_SIZES": "sdxl=lots"}, cwd=Path("/tmp"))


def test_fast_path_settings():
    cfg = load_config({"FARM_DTYPE": "BF16", "FARM_STORE_OVERLAP": "0", "FARM_IO_THREADS": "4",
                       "FARM_PREVIEW_DECODERS": "sdxl=/models/taesdxl, sd15=s3://weights/taesd"}, cwd=Path("/tmp"))
    assert (cfg.dtype, cfg.store_overlap, cfg.io_threads) == ("bf16", False, 4)
    assert cfg.preview_decoders == (("sdxl", "/models/taesdxl"), ("sd15", "s3://weights/taesd"))
    default = load_config({}, cwd=Path("/tmp"))
    assert (default.dtype, default.store_overlap, default.io_threads, default.preview_decoders) == ("auto", True, 2, ())



def test_celery_task_events_are_off_until_asked_for(redis_server):
    """Three to four Redis PUBLISHes per message that no one reads unless a monitor listens; Flower
    turns them on itself (issue 15)."""
    from farm.fleet.dispatch import celery_settings

    default = celery_settings(load_config({}, cwd=Path("/tmp")), redis_server.url)
    assert (default["worker_send_task_events"], default["task_send_sent_event"]) == (False, False)
    on = celery_settings(load_config({"FARM_TASK_EVENTS": "1"}, cwd=Path("/tmp")), redis_server.url)
    assert (on["worker_send_task_events"], on["task_send_sent_event"]) == (True, True)
