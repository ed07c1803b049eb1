"""Training jobs on the farm's side (issue 14): `farm distill` checks everything before anything is
written, a dataset is read and checked whole, every ledger write of a training job is fenced by its
attempt's token, and the result becomes an accelerator that recipes pick."""

import io
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.errors import ConflictError, InputError
from farm.intake.datasets import read_dataset
from farm.intake.images import InputReader
from farm.jobs.training import DistillRequest, checkpoint_key, eval_split, resolve_distill
from farm.ledger import Artifact, Completion, Ledger
from farm.models.catalog import BUILTIN_ADAPTERS, BUILTIN_MODELS, AdapterEntry
from farm.models.recipes import resolve_recipe

TEACHER = BUILTIN_MODELS["tiny-sd"]


def png(colour=(200, 30, 30), size=16) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def dataset_dir(tmp_path, n=3, captions=True):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.png").write_bytes(png((40 * i, 10, 200)))
        if captions:
            (folder / f"{i:02d}.txt").write_text(f"a blue square number {i}\n")
    return folder


def resolve(**overrides):
    request = DistillRequest(teacher="tiny-sd", name="my-lcm", **overrides)
    return resolve_distill(request, TEACHER, taken={"tiny-sd"}, data={"manifest": "0" * 64, "examples": 3},
                           captions=["a", "b", "c"], seed=7)


def test_a_distillation_is_one_job_spec_with_its_training_settings():
    spec = resolve(steps=300, rank=8, skip=25, guidance_range="3,9", batch_size=4)
    assert (spec.kind, spec.model, spec.steps, spec.seed, spec.recipe) == ("distill", "tiny-sd", 300, 7, "lcm-lora")
    training = spec.training
    assert training["rank"] == 8 and training["skip"] == 25 and training["original_steps"] == 40
    assert training["guidance_range"] == [3.0, 9.0] and training["batch_size"] == 4
    assert training["eval_prompts"] == ["a", "b", "c"] and training["eval_held_out"] is False
    # a training job's settings shape its digest, and a render's digest is what it was
    assert resolve(steps=300).digest != resolve(steps=301).digest != resolve(steps=300, rank=4).digest
    assert json.dumps(spec.group_key, default=str)


@pytest.mark.parametrize("overrides, words", [
    ({"steps": 0}, "steps: 0 is outside"),
    ({"guidance_range": "8,2"}, "min 8 is greater than max 2"),
    ({"guidance_range": "2"}, "expected MIN,MAX"),
    ({"skip": 30}, "does not divide 1000"),
    ({"solver": "euler"}, "is not a solver"),
    ({"rank": 0}, "rank: 0 is outside"),
    ({"lr": -1}, "lr: -1 is outside"),
    ({"resolution": 100}, "resolution: 100 is not a multiple of 8"),
    ({"resolution": 32}, "resolution: 32 is outside 64..2048"),
    ({"gradient_checkpointing": "yes"}, "expected true or false"),
])
def test_bad_settings_are_refused_by_name(overrides, words):
    with pytest.raises(InputError, match=words):
        resolve(**overrides)


def test_the_training_resolution_defaults_to_the_teachers_native_size():
    assert resolve().training["resolution"] == TEACHER.native_size
    assert resolve(resolution="128").training["resolution"] == 128
    assert "gradient_checkpointing" not in resolve().training  # the same result either way: recorded when asked
    assert resolve(gradient_checkpointing=True).training["gradient_checkpointing"] is True


def test_a_taken_name_and_an_unsupported_teacher_are_refused():
    with pytest.raises(InputError, match="already registered"):
        resolve_distill(DistillRequest(name="tiny-sd"), TEACHER, taken={"tiny-sd"}, data={}, captions=["a"], seed=0)
    with pytest.raises(InputError, match="distill supports sd15"):
        resolve_distill(DistillRequest(name="x"), BUILTIN_MODELS["tiny-flux"], taken=set(), data={},
                        captions=["a"], seed=0)
    with pytest.raises(InputError, match="is a lcm model"):
        resolve_distill(DistillRequest(name="x"), BUILTIN_MODELS["tiny-sd-lcm"], taken=set(), data={},
                        captions=["a"], seed=0)


def test_evaluation_prompts_are_held_out_when_the_captions_allow():
    many = [f"caption {i}" for i in range(30)] * 2
    prompts, held_out = eval_split(many)
    assert held_out and prompts == ["caption 27", "caption 28", "caption 29"]
    assert eval_split(["a", "b", "a"]) == (["a", "b"], False)


def test_a_dataset_directory_is_read_whole_and_checked(tmp_path):
    folder = dataset_dir(tmp_path)
    data = read_dataset(str(folder), InputReader(cwd=tmp_path))
    assert [c for _, c in data.examples] == [f"a blue square number {i}" for i in range(3)]
    assert set(data.images) == {sha for sha, _ in data.examples} and len(data.sha256) == 64
    assert data.record() == {"source": str(folder), "manifest": data.sha256, "examples": 3}
    # metadata.jsonl (Hugging Face's imagefolder) instead of .txt files
    for txt in folder.glob("*.txt"):
        txt.unlink()
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i:02d}.png", "text": f"t{i}"}) + "\n"
                                                   for i in range(3)))
    assert [c for _, c in read_dataset(str(folder), InputReader(cwd=tmp_path)).examples] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "01.txt").unlink(), "01.png: no caption (01.txt is missing)"),
    (lambda d: (d / "02.png").write_bytes(b"not a png"), "02.png"),
    (lambda d: (d / "00.txt").write_text("   \n"), "empty caption"),
    (lambda d: [p.unlink() for p in d.iterdir()], "no images"),
])
def test_a_bad_dataset_is_refused_in_one_line(tmp_path, damage, words):
    folder = dataset_dir(tmp_path)
    damage(folder)
    with pytest.raises(InputError, match=words.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        read_dataset(str(folder), InputReader(cwd=tmp_path))
    with pytest.raises(InputError, match="no such directory"):
        read_dataset(str(tmp_path / "nowhere"), InputReader(cwd=tmp_path))


@pytest.mark.parametrize("args, words", [
    (["--teacher", "nope"], "teacher: unknown model 'nope'"),
    (["--teacher", "tiny-flux"], "distill supports sd15"),
    (["--steps", "0"], "steps: 0 is outside"),
    (["--guidance-range", "9,3"], "min 9 is greater than max 3"),
    (["--name", "tiny-sd-lcm-lora"], "already registered"),
    (["--data", "missing-dir"], "no such directory"),
])
def test_farm_distill_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, monkeypatch, args, words):
    home = tmp_path / "home"
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    dataset_dir(tmp_path)
    base = {"--teacher": "tiny-sd", "--data": "data", "--name": "mine", "--steps": "10"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = CliRunner().invoke(cli, ["distill", *[x for kv in base.items() for x in kv]], catch_exceptions=False)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert not (home / "ledger.db").exists()  # nothing written, not even a ledger


# -- the ledger: fenced writes, and the result registered with the completion ------------------------
@pytest.fixture
def claimed(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    spec = resolve(steps=50)
    batch = ledger.create_batch(specs=[spec], spec={}, request_digest="d", base_seed=7, priority=0,
                                submitter="t", idempotency_key=None, axes=[{}], reuse={})
    [claim] = ledger.claim(batch.job_ids, worker="w", device="cpu", lease_s=60)
    return ledger, claim


def completion(claim):
    artifact = Artifact(store_url="file:///s", key="adapters/my-lcm/pytorch_lora_weights.safetensors", sha256="a" * 64,
                        bytes=10, width=0, height=0, content_type="application/octet-stream")
    return Completion(claim.job_id, claim.token, artifact, {"total_ms": 1.0}, 4, {"device": "cpu"})


def entry(name="my-lcm", sha="a" * 64):
    return AdapterEntry(name=name, source="/s/adapters/my-lcm/pytorch_lora_weights.safetensors", arch="tiny-sd",
                        kind="accelerator", recipe="lcm-lora", sha256=sha, original_steps=50,
                        provenance="job:1", builtin=False)


def test_training_writes_are_fenced_by_the_attempts_token(claimed):
    ledger, claim = claimed
    start = ledger.start_training(claim.job_id, claim.token, 50)
    assert (start.key, start.step) == (None, 0)
    assert ledger.start_training(claim.job_id, "stale-token", 50) is None
    assert ledger.report_progress(claim.job_id, claim.token, step=10, loss=0.5, steps_per_s=2.0, eta_s=20.0)
    assert not ledger.report_progress(claim.job_id, "stale-token", step=11, loss=0.1, steps_per_s=2.0, eta_s=1.0)
    key = checkpoint_key(claim.job_id, 20, claim.token)
    assert ledger.record_checkpoint(claim.job_id, claim.token, key=key, step=20)
    assert not ledger.record_checkpoint(claim.job_id, "stale-token", key="elsewhere", step=40)
    view = ledger.trainings([claim.job_id])[claim.job_id]
    assert (view.step, view.checkpoint_step, view.checkpoint_key, view.loss) == (20, 20, key, 0.5)
    # the lost worker's job goes back to the queue; the next attempt resumes from the checkpoint
    assert ledger.requeue(claim.job_id, claim.token, error="lost")
    [again] = ledger.claim([claim.job_id], worker="w2", device="cpu", lease_s=60)
    resume = ledger.start_training(again.job_id, again.token, 50)
    assert (resume.key, resume.step) == (key, 20)
    assert not ledger.record_checkpoint(claim.job_id, claim.token, key="late", step=30)  # the old attempt
    assert ledger.trainings([claim.job_id])[claim.job_id].resumed_from == 20


def test_the_result_is_registered_in_the_transaction_that_completes_the_job(claimed):
    ledger, claim = claimed
    ledger.start_training(claim.job_id, claim.token, 50)
    assert not ledger.finish_training(replace(completion(claim), token="stale"), evaluation={}, entry=entry(),
                                      sha256="a" * 64)
    assert "my-lcm" not in ledger.catalog().adapters
    evaluation = {"rows": [], "one_step_error": {"teacher-lcm": 1.4, "lcm-lora": 0.6}}
    assert ledger.finish_training(completion(claim), evaluation=evaluation, entry=entry(), sha256="a" * 64)
    registered = ledger.catalog().adapters["my-lcm"]
    assert (registered.kind, registered.recipe, registered.original_steps, registered.provenance) == \
        ("accelerator", "lcm-lora", 50, "job:1")
    [view] = ledger.list_jobs(job_id=claim.job_id)
    assert view.state == "succeeded" and view.training.evaluation == evaluation and view.training.result == "my-lcm"
    assert view.as_dict()["training"]["progress"]["result"] == "my-lcm"


def test_a_name_taken_while_it_trained_leaves_the_job_running_and_nothing_registered(claimed):
    ledger, claim = claimed
    ledger.add_adapter(entry(sha="b" * 64))
    with pytest.raises(ConflictError):
        ledger.finish_training(completion(claim), evaluation={}, entry=entry(), sha256="a" * 64)
    [view] = ledger.list_jobs(job_id=claim.job_id)
    assert view.state == "running" and view.artifact is None


# -- the result as an accelerator -----------------------------------------------------------------
def test_a_job_names_its_accelerator_or_its_model_is_bound_to_one():
    adapters = {**BUILTIN_ADAPTERS, "my-lcm": entry()}
    default = resolve_recipe("lcm-lora", TEACHER, None, None, "", adapters)
    assert default.accelerator == "tiny-sd-lcm-lora" and "original_inference_steps" not in default.scheduler_config
    named = resolve_recipe("lcm-lora", TEACHER, None, None, "", adapters, "my-lcm")
    assert named.accelerator == "my-lcm" and named.scheduler_config["original_inference_steps"] == 50
    bound = replace(TEACHER, bindings=(("lcm-lora", "my-lcm"),))
    assert resolve_recipe("lcm-lora", bound, None, None, "", adapters).accelerator == "my-lcm"
    with pytest.raises(InputError, match="accelerator: unknown adapter .nope."):
        resolve_recipe("lcm-lora", TEACHER, None, None, "", adapters, "nope")
    with pytest.raises(InputError, match="is not a lcm-lora accelerator"):
        resolve_recipe("lcm-lora", TEACHER, None, None, "", adapters, "tiny-sd-toy")
    with pytest.raises(InputError, match="loads no accelerator"):
        resolve_recipe("plain", TEACHER, None, None, "", adapters, "my-lcm")


def test_binding_a_model_through_the_api_checks_the_adapter(tmp_path, monkeypatch):
    import farm

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    f = farm.Farm.connect()
    f.ledger.add_adapter(entry())
    f.bind_accelerator("tiny-sd", "my-lcm")
    assert f.catalog().models["tiny-sd"].bound("lcm-lora") == "my-lcm"
    plan = f.plan("a red circle", model="tiny-sd", seed=1)
    assert plan.specs[0].adapters[0].name == "my-lcm"
    with pytest.raises(InputError, match="is not a lcm-lora accelerator"):
        f.bind_accelerator("tiny-sd", "tiny-sd-toy")
    f.unbind_accelerator("tiny-sd")
    assert f.plan("a red circle", model="tiny-sd", seed=1).specs[0].adapters[0].name == "tiny-sd-lcm-lora"
    f.close()


def test_status_watch_reports_a_training_jobs_progress_once_per_step():
    from farm.ledger.values import TrainingView
    from farm.results.progress import TrainingProgress

    def view(step, result=None):
        return TrainingView(step=step, total_steps=100, loss=0.01234, steps_per_s=4.0, eta_s=(100 - step) / 4,
                            updated_at=None, checkpoint_step=step - step % 20 or None, checkpoint_key=None,
                            resumed_from=0, evaluation=None, result=result)

    progress = TrainingProgress()
    assert progress.lines({7: view(40)}) == ["job 7: step 40/100  loss 0.01234  4.00 steps/s  ETA 15s  "
                                             "(checkpoint at 40)"]
    assert progress.lines({7: view(40)}) == []  # nothing moved: nothing said
    assert progress.lines({7: view(100, "mine")}) == ["job 7: trained 100 steps; registered mine"]
    assert progress.lines({7: view(100, "mine")}) == []
