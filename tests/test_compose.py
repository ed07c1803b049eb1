"""compose.yml: the fleet's services are there and every FARM_* variable it sets is one the farm reads."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def farm_variables_read() -> set[str]:
    names = set()
    for path in list((ROOT / "farm").rglob("*.py")) + list((ROOT / "workers").rglob("*.py")):
        names |= set(re.findall(r"\"(FARM_[A-Z0-9_]+)\"", path.read_text()))
    return names


def test_compose_file_follows_the_compose_specification():
    """Validated against models generated from the Compose Specification's JSON schema, after YAML
    anchors and merge keys are resolved as docker compose resolves them."""
    import pytest

    models = pytest.importorskip("compose_spec.models")
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    spec = models.ComposeSpecification.model_validate(compose)
    assert set(spec.services) == set(compose["services"])
    broken = {**compose, "services": {**compose["services"], "redis": {**compose["services"]["redis"], "restart": 5}}}
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="restart"):
        models.ComposeSpecification.model_validate(broken)


def test_compose_services_and_variables():
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "minio", "minio-bucket", "migrate", "worker-gpu0", "worker-cpu"} <= set(services)
    assert "--requirepass" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    gpu = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["device_ids"] == ["0"]
    assert services["migrate"]["command"] == ["farm", "db", "upgrade"]
    # the API is the only port published (issue 23): the broker, the ledger, the store and Flower
    # stay on the compose network
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"api"}, published
    assert services["api"]["command"][:2] == ["farm", "serve"]
    known = farm_variables_read()
    for name, service in services.items():
        env = service.get("environment") or {}
        for variable in env:
            if variable.startswith("FARM_"):
                assert variable in known, f"{name} sets {variable}, which the farm never reads"
