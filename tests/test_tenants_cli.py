"""`farm tenants set|show` with weights and quotas, `farm stats --by tenant` and `farm dispatch`
(issue 24), through the CLI on a farm home of its own (SQLite, no broker needed with fair share)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from farm.cli import cli


@pytest.fixture
def home(tmp_path, monkeypatch, model_cache):
    for key, value in {"FARM_HOME": str(tmp_path / "home"), "FARM_MODEL_CACHE": str(model_cache),
                       "FARM_SCHEDULER": "fair"}.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "home"


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_weights_and_quotas_are_set_shown_and_enforced(home):
    done = invoke("tenants", "set", "design", "--weight", "2", "--images-per-day", "10", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["weight"] == 2.0 and json.loads(done.stdout)["quotas"] == {"images_per_day": 10}
    import farm

    with farm.Farm.connect() as api:
        api.submit_plan(api.plan("a fox", model="tiny-sd", variants=6, seed=1), tenant="design")
        with pytest.raises(farm.errors.QuotaExceeded):
            api.submit_plan(api.plan("a fox", model="tiny-sd", variants=6, seed=2), tenant="design")
    shown = invoke("tenants", "show", "design")
    assert shown.exit_code == 0
    assert "quotas: images per day 10" in shown.stdout and "today: 6 images" in shown.stdout
    assert "left: images per day 4" in shown.stdout
    # -1 removes a quota; the weight stays
    cleared = json.loads(invoke("tenants", "set", "design", "--images-per-day", "-1", "--json").stdout)
    assert cleared["quotas"] is None and cleared["weight"] == 2.0


@pytest.mark.parametrize("args, message", [
    (["--weight", "0"], "weight: expected a weight from 0.01 to 1000"),
    (["--max-queued", "nope"], "'nope' is not a valid integer"),
])
def test_bad_tenant_settings_are_one_line_errors(home, args, message):
    result = invoke("tenants", "set", "design", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_stats_by_tenant_reports_each_tenants_cost(home):
    result = invoke("stats", "--by", "tenant", "--since", "1h", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["by"] == "tenant" and json.loads(result.stdout)["groups"] == []
    table = invoke("stats", "--by", "tenant")
    assert "GPU-s" in table.stdout


def test_dispatch_refuses_a_fifo_farm(home, monkeypatch):
    monkeypatch.setenv("FARM_SCHEDULER", "fifo")
    result = invoke("dispatch")
    assert result.exit_code == 2 and "scheduler is fifo" in result.output
