"""The Python API as a script uses it: a real local farm (private Redis, one Celery worker, the
tiny-sd model built locally), then the same calls with bad input."""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import farm
from farm.cli import cli
from farm.config import load_config
from farm.fleet.localfarm import redis_alive
from farm.jobs.planning import plan_submission
from farm.jobs.spec import Catalog
from farm.ledger import JobView


@pytest.mark.workers
@pytest.mark.redis
def test_a_script_submits_waits_downloads_and_lists_through_a_local_farm(farm_env, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    with farm.Farm.local(home=home, workers=1, env=farm_env) as f:
        batch = f.submit("a red fox in snow", model="tiny-sd", variants=3, seed=10)
        counts = f.wait(batch, timeout=300)
        assert counts == {"queued": 0, "running": 0, "succeeded": 3, "failed": 0, "cancelled": 0}

        paths = f.download(batch, out)
        assert [p.name for p in paths] == ["00000-10.png", "00001-11.png", "00002-12.png"]
        jobs = f.jobs(batch)
        assert all(isinstance(job, JobView) for job in jobs)
        assert [(job.seed, job.state) for job in jobs] == [(10, "succeeded"), (11, "succeeded"), (12, "succeeded")]
        for job, path in zip(jobs, paths):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == job.artifact.sha256
            assert job.timings["denoise"] > 0 and job.timings["total"] >= job.timings["denoise"]
        gallery = (out / "index.html").read_text()
        assert all(p.name in gallery for p in paths)
        summary = f.status(batch)
        assert (summary.done, summary.batch.job_count, summary.batch.base_seed) == (3, 3, 10)
        assert f.jobs(state="succeeded", limit=2) == jobs[:2]

        # a sweep from a spec file; the caveat of a negative prompt with CFG off is a FarmWarning
        spec = tmp_path / "sweep.yaml"
        spec.write_text("prompt: a grey hare\nmodel: tiny-sd\nseeds: 0-1\nsteps: [2, 4]\nnegative: blurry\n")
        with pytest.warns(farm.FarmWarning, match="negative prompt ignored"):
            swept = f.submit_spec(spec)
        f.wait(swept, timeout=300)
        assert sorted((j.spec.steps, j.seed, j.spec.negative_prompt) for j in f.jobs(swept)) == [
            (2, 0, "blurry"), (2, 1, "blurry"), (4, 0, "blurry"), (4, 1, "blurry")]
        # the same spec again: every image exists, so nothing renders
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", farm.FarmWarning)
            again = f.submit_plan(f.plan(spec=str(spec)))
        assert (again.jobs, again.to_render, again.reused) == (4, 0, 4)
        assert f.dry_run(spec=str(spec))["to_render"] == 0
        assert [b.batch.id for b in f.batches()] == [again.batch, swept, batch]

    # it started the private Redis and the workers, so it stopped them
    cfg = load_config({"FARM_HOME": str(home)})
    assert not (home / "run" / "workers.pid").exists() and not redis_alive(cfg)


# the same bad input through the API and through `farm submit`: the same one-line message
BAD = [
    ({"prompt": "p", "model": "tiny-sd", "steps": 9}, ["p", "--model", "tiny-sd", "--steps", "9"],
     "steps: 9 is outside 1..8 for the lcm-lora recipe"),
    ({"prompt": "p", "model": "no-such"}, ["p", "--model", "no-such"], "model: unknown model 'no-such'"),
    ({"prompt": "p", "variants": 0}, ["p", "--variants", "0"], "variants: 0 is outside 1..10000"),
    ({}, [], "prompt: missing: give a PROMPT, --file or --spec"),
    ({"prompt": "p", "key": "has space"}, ["p", "--key", "has space"],
     "key: an idempotency key is 1-128 printable characters without spaces"),
    ({"file": "missing.txt"}, ["--file", "missing.txt"], "file: missing.txt: no such file"),
]


@pytest.mark.parametrize("kwargs, args, message", BAD, ids=[m.split(":")[0] for _, _, m in BAD])
def test_bad_input_raises_input_error_with_the_clis_message_and_writes_nothing(
        farm_env, tmp_path, monkeypatch, kwargs, args, message):
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)  # "missing.txt" is relative
    with farm.Farm.connect(env={**farm_env, "FARM_HOME": str(home)}) as f:
        with pytest.raises(farm.InputError) as raised:
            f.submit(**kwargs)
    assert str(raised.value).startswith(message)
    printed = CliRunner().invoke(cli, ["submit", *args], env={"FARM_HOME": str(home)})
    assert (printed.exit_code, printed.stderr) == (2, f"error: {raised.value}\n")
    assert not home.exists()  # no ledger, no private Redis, no store


def test_a_local_farm_with_bad_devices_starts_nothing(farm_env, tmp_path):
    home = tmp_path / "home"
    with pytest.raises(farm.InputError, match="^devices: 'x' is not a GPU index"):
        farm.Farm.local(home=home, devices="x", env=farm_env)
    assert not home.exists()


def test_plan_submission_passes_any_job_field_through_by_name():
    """A job field the planner does not name (``kind``) still reaches the jobs, and is validated."""
    planned = plan_submission(Catalog(), "tiny-sd", prompt="p", kind="txt2img", variants=2, seed=3,
                              rng=random.Random(0))
    assert [(s.kind, s.seed) for s in planned.specs] == [("txt2img", 3), ("txt2img", 4)]
    with pytest.raises(farm.InputError, match="^kind: 'warp' is not a job kind"):
        plan_submission(Catalog(), "tiny-sd", prompt="p", kind="warp")
    with pytest.raises(TypeError, match="'colour'"):
        plan_submission(Catalog(), "tiny-sd", prompt="p", colour="red")


def test_importing_farm_is_light():
    """``import farm`` gives the API names without importing the ledger, Celery or the API itself."""
    import subprocess
    import sys

    code = ("import sys, farm; loaded = [m for m in ('farm.api', 'sqlalchemy', 'celery', 'torch') if m in sys.modules];"
            "import json; print(json.dumps([loaded, farm.Farm.__module__, farm.InputError.__module__]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert json.loads(result.stdout) == [[], "farm.api", "farm.errors"]
