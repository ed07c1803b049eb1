"""`farm distill` end to end (issue 14): a real worker process distils the trained tiny teacher into
an LCM-LoRA; kill -9 of the worker mid-run resumes from the last checkpoint, not from step 0; the
evaluation is recorded; the result is registered as an accelerator and renders at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import servers
from tests.faults.harness import ROOT, FaultFarm

STEPS = 120  # enough for the one-step error to fall well below the teacher's own (engine tests measure it)
CHECKPOINT_EVERY = 20


@pytest.fixture
def trainer_farm(tmp_path, redis_server, model_cache):
    queue = f"distill{tmp_path.name[-8:].replace('_', '')}"
    farm = FaultFarm(tmp_path, redis_server.url, workers=1, extra={
        "FARM_RENDERER": "diffusion", "FARM_MODEL_CACHE": str(model_cache), "FARM_QUEUE": queue,
        "FARM_TORCH_THREADS": "1", "FARM_LEASE_S": "4"})
    yield farm
    farm.close()


def distill(farm, tmp_path, examples: int, seed: int, name: str, *options: str) -> dict:
    """A shapes dataset of ``examples`` images, the farm started, and `farm distill` of it submitted."""
    from engine.training.shapes import write_dataset

    data = tmp_path / "shapes"
    write_dataset(data, examples, seed=seed)
    farm.start()
    return json.loads(farm.cli("distill", "--teacher", "tiny-sd", "--data", str(data), "--name", name, *options,
                               "--json").stdout)


def test_distil_the_tiny_teacher_resume_after_kill_9_and_render_with_the_result(trainer_farm, tmp_path):
    farm = trainer_farm
    submitted = distill(farm, tmp_path, 64, 3, "shapes-lcm", "--steps", str(STEPS), "--batch-size", "8",
                        "--checkpoint-every", str(CHECKPOINT_EVERY), "--seed", "1", "--eval-samples", "16")
    assert submitted["examples"] == 64
    job = submitted["job"]

    # kill -9 the worker once a checkpoint past the first is recorded
    servers.wait_until(lambda: (farm.sql("select checkpoint_step from trainings where job_id = :j", j=job)
                                or [(None,)])[0][0] or 0, 180, interval=0.2, what="a first checkpoint")
    [victim] = farm.worker_pids()
    os.kill(victim, signal.SIGKILL)
    killed_at = farm.sql("select checkpoint_step from trainings where job_id = :j", j=job)[0][0]
    assert killed_at >= CHECKPOINT_EVERY

    farm.wait_done(submitted["batch"], 1, timeout=400)
    [(state, attempts)] = farm.sql("select state, attempts from jobs where id = :j", j=job)
    assert (state, attempts) == ("succeeded", 2), farm.sql("select outcome, error from attempts")
    outcomes = [o for (o,) in farm.sql("select outcome from attempts where job_id = :j order by id", j=job)]
    assert outcomes == ["lost", "succeeded"], outcomes
    [view] = json.loads(farm.cli("jobs", "list", "--batch", submitted["batch"], "--json").stdout)
    progress = view["training"]["progress"]
    # the second attempt started from the checkpoint the first one left, not from step 0
    assert progress["resumed_from"] >= killed_at > 0 and progress["step"] == STEPS
    assert progress["result"] == "shapes-lcm"

    evaluation = progress["evaluation"]
    error = evaluation["one_step_error"]
    assert error["lcm-lora"] * 1.5 <= error["teacher-lcm"], error
    assert {(r["sampler"], r["steps"]) for r in evaluation["rows"]} >= {("lcm-lora", 1), ("teacher-lcm", 4),
                                                                        ("teacher-ddim", 8), ("teacher-dpmpp-2m-karras", 4)}
    # the evaluation prompts were held out of training: what the worker trained on excludes them
    captions = [(tmp_path / "shapes" / f"{i:04d}.txt").read_text().strip() for i in range(64)]
    evaluated, trained = set(evaluation["prompts"]), set(evaluation["trained_captions"])
    assert evaluation["prompts_held_out"] is True and evaluated and not evaluated & trained
    assert evaluated | trained == set(captions) and evaluation["trained_captions_total"] == len(trained)
    assert evaluation["trained_examples"] == sum(c not in evaluated for c in captions) < 64

    adapters = {a["name"]: a for a in json.loads(farm.cli("adapters", "list", "--json").stdout)}
    made = adapters["shapes-lcm"]
    assert (made["kind"], made["recipe"], made["arch"], made["provenance"]) == \
        ("accelerator", "lcm-lora", "tiny-sd", f"job:{job}")
    assert made["original_steps"] == 50 and made["sha256"] == view["sha256"]

    # usable at once: named by a job, then bound to the teacher so its lcm-lora recipe picks it
    named = json.loads(farm.cli("submit", "a red circle", "--model", "tiny-sd", "--accelerator", "shapes-lcm",
                                "--steps", "2", "--seed", "5", "--json").stdout)
    farm.wait_done(named["batch"], 1, timeout=120)
    [rendered] = json.loads(farm.cli("jobs", "list", "--batch", named["batch"], "--json").stdout)
    assert rendered["state"] == "succeeded" and rendered["adapters"][0]["name"] == "shapes-lcm"
    assert rendered["environment"]["adapter_sha256"]["shapes-lcm"] == made["sha256"]
    farm.cli("models", "bind", "tiny-sd", "shapes-lcm")
    bound = json.loads(farm.cli("submit", "a red circle", "--model", "tiny-sd", "--steps", "2", "--seed", "5",
                                "--dry-run", "--json").stdout)
    assert bound["jobs"] == 1 and bound["reused"] == 1  # the same job as the named one: its image is reused


def test_cancel_stops_a_training_job_at_the_next_step_and_keeps_its_last_checkpoint(trainer_farm, tmp_path):
    farm = trainer_farm
    submitted = distill(farm, tmp_path, 16, 4, "never", "--steps", "100000", "--batch-size", "2",
                        "--checkpoint-every", "5")
    job = submitted["job"]
    servers.wait_until(lambda: (farm.sql("select checkpoint_step from trainings where job_id = :j", j=job)
                                or [(None,)])[0][0], 180, interval=0.2, what="a checkpoint")
    assert json.loads(farm.cli("cancel", submitted["batch"], "--running", "--json").stdout)["cancelled"] == 1
    farm.wait_done(submitted["batch"], 1, timeout=60)  # the job is cancelled at once; the worker stops next
    servers.wait_until(lambda: farm.sql("select outcome from attempts where job_id = :j", j=job)[0][0] != "running",
                       60, interval=0.2, what="the training attempt to stop")
    [(outcome, error)] = farm.sql("select outcome, error from attempts where job_id = :j", j=job)
    assert outcome == "cancelled" and error.startswith("cancelled at step "), (outcome, error)
    [(key, step)] = farm.sql("select checkpoint_key, checkpoint_step from trainings where job_id = :j", j=job)
    assert step >= 5 and (tmp_path / "home" / "store" / key).is_file()  # kept, for a later resume or a look
    assert "never" not in {a["name"] for a in json.loads(farm.cli("adapters", "list", "--json").stdout)}


def test_a_full_model_distillation_registers_an_lcm_model_that_renders(trainer_farm, tmp_path):
    farm = trainer_farm
    submitted = distill(farm, tmp_path, 8, 5, "shapes-lcm-full", "--full", "--steps", "4", "--batch-size", "2",
                        "--eval-samples", "4")
    farm.wait_done(submitted["batch"], 1, timeout=180)
    [view] = json.loads(farm.cli("jobs", "list", "--batch", submitted["batch"], "--json").stdout)
    assert view["state"] == "succeeded", view["last_error"]
    evaluation = view["training"]["progress"]["evaluation"]
    assert {r["sampler"] for r in evaluation["rows"]} == \
        {"teacher-ddim", "teacher-dpmpp-2m-karras", "teacher-lcm", "lcm-model"}
    distinct = {(tmp_path / "shapes" / f"{i:04d}.txt").read_text().strip() for i in range(8)}
    evaluated, trained = set(evaluation["prompts"]), set(evaluation["trained_captions"])
    if len(distinct) >= 5:  # farm.jobs.training.MIN_HELD_OUT_CAPTIONS: one caption is spared
        assert evaluation["prompts_held_out"] is True and not evaluated & trained
    else:  # too few to spare one: evaluated on training captions, and the record says so
        assert evaluation["prompts_held_out"] is False and evaluated <= trained
    models = {m["name"]: m for m in json.loads(farm.cli("models", "list", "--json").stdout)}
    made = models["shapes-lcm-full"]
    assert (made["kind"], made["family"], made["arch"], made["provenance"]) == \
        ("lcm", "sd15", "tiny-sd", f"job:{submitted['job']}")
    farm.stop()  # this fleet serves tiny-sd's queue; a worker for the new model's queue renders it
    farm.supervisor = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", "1", "--models",
                                        "shapes-lcm-full"], env=farm.env, cwd=ROOT, stdout=farm.log,
                                       stderr=subprocess.STDOUT)
    rendered = json.loads(farm.cli("submit", "a red circle", "--model", "shapes-lcm-full", "--recipe", "lcm",
                                   "--steps", "2", "--seed", "3", "--json").stdout)
    farm.wait_done(rendered["batch"], 1, timeout=120)
    [image] = json.loads(farm.cli("jobs", "list", "--batch", rendered["batch"], "--json").stdout)
    assert image["state"] == "succeeded" and image["scheduler"] == "LCMScheduler", image["last_error"]

    # an LCM model registered as a base model passes submission (its files say sd15, tiny-sd) but
    # the worker finds its UNet already embeds guidance: a data error, failed at once, not retried
    farm.cli("models", "add", "lcm-as-base", "--source", made["source"], "--family", "sd15", "--arch", "tiny-sd")
    farm.stop()
    farm.supervisor = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", "1", "--models",
                                        "lcm-as-base"], env=farm.env, cwd=ROOT, stdout=farm.log,
                                       stderr=subprocess.STDOUT)
    refused = json.loads(farm.cli("distill", "--teacher", "lcm-as-base", "--data", str(tmp_path / "shapes"), "--name",
                                  "never-made", "--steps", "2", "--batch-size", "2", "--json").stdout)
    farm.wait_done(refused["batch"], 1, timeout=180)
    [(state, attempts, error)] = farm.sql("select state, attempts, last_error from jobs where id = :j", j=refused["job"])
    assert (state, attempts) == ("failed", 1), (state, attempts, error)
    assert error.startswith("data: the teacher UNet already embeds guidance"), error
    assert [o for (o,) in farm.sql("select outcome from attempts where job_id = :j", j=refused["job"])] == ["failed"]
