"""Bulk variant generation end to end on tiny-sd with one real worker: sweeps, contact sheets,
dedupe, cancel, retry, pause/resume, priorities, replay, gallery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import servers
from tests.test_end_to_end import farm

pytestmark = [pytest.mark.workers, pytest.mark.slow]


class Farm:
    def __init__(self, env):
        self.env = env

    def __call__(self, *args, check=True):
        return farm(*args, env=self.env, check=check)

    def json(self, *args):
        return json.loads(self(*args, "--json").stdout)

    def wait(self, batch, timeout=120):
        def done():
            status = self.json("status", batch)
            return status if status["done"] == status["jobs"] else None

        return servers.wait_until(done, timeout, interval=0.3, what=f"batch {batch}")

    def jobs(self, batch):
        return self.json("jobs", "list", "--batch", batch)


@pytest.fixture
def fresh(farm_env):
    f = Farm({**farm_env, "FARM_MICRO_BATCH": "1"})
    yield f
    f("down", check=False)


def test_sweep_sheet_dedupe_extend_replay_and_gallery(fresh, tmp_path):
    fresh("up", "--workers", "1")
    first = fresh.json("submit", "--model", "tiny-sd", "--steps", "1-4", "--seeds", "0-1", "a red fox in snow")
    assert (first["jobs"], first["to_render"], first["reused"]) == (8, 8, 0)
    fresh.wait(first["batch"])
    jobs = fresh.jobs(first["batch"])
    assert [(j["steps"], j["seed"]) for j in jobs] == [(s, seed) for s in range(1, 5) for seed in (0, 1)]
    assert all(j["state"] == "succeeded" and j["axes"] == {"steps": j["steps"], "seed": j["seed"]} for j in jobs)

    sheet = fresh.json("results", "sheet", first["batch"], "-o", str(tmp_path / "sheet.png"))
    assert (sheet["columns"], sheet["rows"], sheet["column_axis"], sheet["row_axis"]) == (4, 2, "steps", "seed")
    from PIL import Image

    from engine.sheets import HEADER_H, LABEL_W, MIN_CELL, TITLE_H

    with Image.open(tmp_path / "sheet.png") as image:  # 64 px renders enlarged to 128 px cells
        assert image.size == (LABEL_W + 4 * MIN_CELL, TITLE_H + HEADER_H + 2 * MIN_CELL) == tuple(sheet["size"])

    again = fresh.json("submit", "--model", "tiny-sd", "--steps", "1-4", "--seeds", "0-1", "a red fox in snow")
    assert (again["to_render"], again["reused"], again["messages"]) == (0, 8, 0)
    reused = fresh.jobs(again["batch"])
    assert all(j["state"] == "succeeded" and j["attempts"] == 0 and j["reused_from"] for j in reused)
    assert [j["sha256"] for j in reused] == [j["sha256"] for j in jobs]

    extended = fresh.json("submit", "--model", "tiny-sd", "--steps", "1-4", "--seeds", "0-2", "a red fox in snow")
    assert (extended["jobs"], extended["to_render"], extended["reused"]) == (12, 4, 8)
    fresh.wait(extended["batch"])
    rendered = [j for j in fresh.jobs(extended["batch"]) if not j["reused_from"]]
    assert sorted(j["seed"] for j in rendered) == [2, 2, 2, 2]

    forced = fresh.json("submit", "--model", "tiny-sd", "--steps", "1", "--seeds", "0", "a red fox in snow", "--force")
    assert forced["to_render"] == 1

    replayed = fresh.json("replay", str(jobs[5]["id"]))
    assert replayed["max_difference"] == 0 and replayed["notes"] == []
    assert fresh.json("replay", str(reused[5]["id"]))["max_difference"] == 0  # through its source job

    out = tmp_path / "gallery"
    fetched = fresh.json("results", "get", first["batch"], "--out", str(out))
    page = (out / "index.html").read_text()
    assert len(fetched["outputs"]) == 8 and page.count("<figure>") == 8
    assert all(f'src="{Path(p).name}"' in page for p in fetched["outputs"]) and "a red fox in snow" in page

    batches = fresh.json("batches", "list")
    assert [b["batch"] for b in batches][:2] == [forced["batch"], extended["batch"]]
    dry = fresh.json("submit", "--model", "tiny-sd", "--steps", "1-8", "--seeds", "0-124", "a red fox in snow",
                     "--dry-run")
    assert (dry["jobs"], dry["reused"], dry["to_render"]) == (1000, 12, 988)
    assert dry["eta_s"] is not None and dry["eta_s"] > 0  # from the recorded timings of steps 1-4


def test_priority_order_cancel_and_pause_with_one_worker(fresh):
    # everything is submitted while no worker runs, so the broker alone decides the order
    low = fresh.json("submit", "--model", "tiny-sd", "--variants", "4", "--seed", "10", "slow lane", "--priority", "0")
    doomed = fresh.json("submit", "--model", "tiny-sd", "--variants", "3", "--seed", "20", "cancel me")
    paused = fresh.json("submit", "--model", "tiny-sd", "--variants", "2", "--seed", "30", "wait for me")
    high = fresh.json("submit", "--model", "tiny-sd", "--variants", "2", "--seed", "40", "urgent", "--priority", "9")
    assert fresh.json("cancel", doomed["batch"])["cancelled"] == 3
    fresh("pause", paused["batch"])
    fresh("up", "--workers", "1")
    fresh.wait(low["batch"])
    fresh.wait(high["batch"])
    started = sorted((j["started_at"], j["batch"]) for b in (low, high) for j in fresh.jobs(b["batch"]))
    assert [b for _, b in started][:2] == [high["batch"]] * 2, "the urgent batch did not go first"
    assert all(j["state"] == "cancelled" and j["attempts"] == 0 and not j["artifact"]
               for j in fresh.jobs(doomed["batch"]))
    assert all(j["state"] == "queued" for j in fresh.jobs(paused["batch"]))  # consumed, skipped, kept
    resumed = fresh.json("resume", paused["batch"])
    assert resumed["queued"] == 2
    assert fresh.wait(paused["batch"])["counts"]["succeeded"] == 2


def test_cancel_running_stops_at_a_step_boundary_and_retry_renders_only_failures(fresh, tmp_path, model_cache):
    fresh("up", "--workers", "1")
    # a long render: the plain recipe, 60 steps at 512x512 on the tiny model
    slow = fresh.json("submit", "--model", "tiny-sd", "--recipe", "plain", "--steps", "60", "--size", "512x512",
                      "--variants", "2", "--seed", "1", "a long night")
    servers.wait_until(lambda: fresh.json("status", slow["batch"])["counts"]["running"] > 0, 60,
                       what="the slow job to start")
    assert fresh.json("cancel", slow["batch"], "--running")["cancelled"] == 2
    fresh.wait(slow["batch"])
    engine_rows = fresh.jobs(slow["batch"])
    assert all(j["state"] == "cancelled" and not j["artifact"] for j in engine_rows)

    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{Path(fresh.env['FARM_HOME']) / 'ledger.db'}")

    def first_attempt():
        # one short-lived connection per poll: a leaked one per poll exhausted the pool in CI
        with engine.connect() as conn:
            return conn.execute(text("select outcome, error from attempts where job_id = :j"),
                                {"j": engine_rows[0]["id"]}).first()

    servers.wait_until(lambda: first_attempt()[0] != "running", 60, interval=0.2,
                       what="the interrupted attempt to be recorded")
    outcome, error = first_attempt()
    engine.dispose()
    assert outcome == "cancelled" and error.startswith("cancelled at step ")
    assert int(error.split()[-1]) < 60

    # a model whose weights are missing fails; once they are there, retry --failed renders only those jobs
    broken = tmp_path / "broken-model"
    broken.mkdir()
    fresh("models", "add", "flaky", "--source", str(broken), "--family", "sd15", "--arch", "tiny-sd",
          "--native-size", "64")
    (tmp_path / "mixed.jsonl").write_text('{"prompt": "fine", "model": "tiny-sd"}\n'
                                          '{"prompt": "flaky", "model": "flaky"}\n')
    mixed = fresh.json("submit", "--file", str(tmp_path / "mixed.jsonl"), "--variants", "2", "--seed", "3")
    status = fresh.wait(mixed["batch"])
    assert (status["counts"]["succeeded"], status["counts"]["failed"]) == (2, 2)
    shutil.rmtree(broken)
    shutil.copytree(model_cache / "builtin" / "tiny-sd", broken)
    assert fresh.json("retry", mixed["batch"], "--failed")["retried"] == 2
    assert fresh.wait(mixed["batch"])["counts"]["succeeded"] == 4
    attempts = {j["prompt"]: j["attempts"] for j in fresh.jobs(mixed["batch"])}
    assert attempts == {"fine": 1, "flaky": 2}
