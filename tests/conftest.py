"""Fixtures: real Redis, PostgreSQL and S3 servers started by this test run, tiny models built
once per session, and a fresh farm home per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import servers

# No test downloads anything: the Hugging Face libraries refuse to reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
# The suite runs two pytest processes (and the workers they start) on two cores: OpenMP threads
# that spin while they wait took most of the CPU from the ones with work (a test file ran in 70 s
# instead of 9). Passive waiting changes how idle threads wait, not the arithmetic or the pixels.
# Set before torch is imported; the worker processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("FARM_BROKER_URL", None)
os.environ.pop("FARM_DATABASE_URL", None)
os.environ.pop("FARM_STORE_URL", None)

# fixture name -> marker it implies, so `-m "not postgres"` deselects what needs that server
FIXTURE_MARKERS = {
    "redis_server": "redis",
    "postgres_server": "postgres",
    "postgres_url": "postgres",
    "s3_server": "s3",
    "s3_bucket": "s3",
    "fleet": "workers",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Tiny models and LoRAs, built once for the whole run and shared by every farm home."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = servers.start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = servers.start_postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh, empty database per test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    return postgres_server.new_database(name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    for key, value in servers.S3_ENV.items():
        os.environ.setdefault(key, value)
    server = servers.start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    import uuid

    name = f"farm-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def farm_env(tmp_path, model_cache) -> dict[str, str]:
    """Environment for a fresh farm home (embedded broker, SQLite ledger, file store)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(tmp_path / "home"), FARM_MODEL_CACHE=str(model_cache))
    return env
