"""LCM distillation (engine.training.distill) and its evaluation (engine.training.evaluation) on the tiny models:
input validation, exact resume from a checkpoint, interruption, LoRA files that load into a fresh
pipeline, the full-model student, SDXL, the evaluation table, and (with the trained teacher) a
short distillation that cuts the one-step error."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.training.distill import DistillSettings, distill, result_from_checkpoint  # noqa: E402
from engine.training.evaluation import evaluate, frechet_distance  # noqa: E402

TRAINED_TEACHER = Path(__file__).resolve().parents[2] / "engine" / "weights" / "tiny-sd" / "SHA256SUMS"
COLOURS = {"red": (220, 45, 40), "green": (45, 190, 60), "blue": (45, 85, 230)}


def captioned(n: int, seed: int = 0) -> list:
    """Quick captioned 64x64 images: a coloured square on grey."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        image = np.full((64, 64, 3), 60, np.uint8)
        x, y = rng.integers(4, 44, 2)
        image[y:y + 16, x:x + 16] = COLOURS[name]
        out.append((image, f"a {name} square"))
    return out


def load_pipe(directory):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(directory), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny models run mostly small ops, which extra threads (on a
    shared CPU) slow down rather than speed up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_dir(model_cache):
    from engine.pipelines.tiny import ensure_tiny_model

    return ensure_tiny_model("tiny-sd", model_cache)


@pytest.fixture(scope="module")
def sd_pipe(sd_dir):
    return load_pipe(sd_dir)


def render_lcm(pipe, prompt="a red square", steps=2):
    from diffusers import LCMScheduler

    scheduler = pipe.scheduler
    pipe.scheduler = LCMScheduler.from_config(scheduler.config)
    try:
        return pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.scheduler = scheduler


def untouched(pipe):
    """A check that ``pipe`` is as it was: same weights, scheduler, no adapters."""
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    scheduler = pipe.scheduler

    def check():
        state = pipe.unet.state_dict()
        assert state.keys() == weights.keys()
        assert all(torch.equal(state[k], weights[k]) for k in weights)
        assert pipe.scheduler is scheduler
        assert not getattr(pipe.unet, "peft_config", None)
        assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())

    return check


def lora_tensors(weights: bytes) -> dict:
    from safetensors.torch import load

    return load(weights)


@pytest.mark.parametrize("family, n, changes, message", [
    ("flux", 2, {}, "families"),
    ("sd15", 0, {}, "no examples"),
    ("sd15", 2, {"steps": 0}, "steps must be at least 1"),
    ("sd15", 2, {"guidance_min": 9.0, "guidance_max": 8.0}, "guidance_min"),
    ("sd15", 2, {"solver": "euler"}, "unknown solver"),
])
def test_invalid_requests_raise_one_line_value_errors(sd_pipe, family, n, changes, message):
    settings = DistillSettings(**{"steps": 2, **changes})
    with pytest.raises(ValueError, match=message) as raised:
        distill(sd_pipe, family, captioned(n), settings)
    assert "\n" not in str(raised.value)


def test_images_must_be_uint8_and_one_size(sd_pipe):
    with pytest.raises(ValueError, match="uint8"):
        distill(sd_pipe, "sd15", [(np.zeros((64, 64, 3), np.float32), "a red square")], DistillSettings(steps=1))
    mixed = captioned(1) + [(np.zeros((32, 32, 3), np.uint8), "a red square")]
    with pytest.raises(ValueError, match="differs"):
        distill(sd_pipe, "sd15", mixed, DistillSettings(steps=1))


def test_resume_from_a_checkpoint_gives_the_same_weights(sd_pipe):
    check = untouched(sd_pipe)
    data = captioned(6)
    settings = DistillSettings(steps=5, batch_size=4, lr=1e-3, checkpoint_every=2)
    blobs: dict[int, bytes] = {}
    straight = distill(sd_pipe, "sd15", data, settings, on_checkpoint=lambda step, blob: blobs.__setitem__(step, blob))
    assert sorted(blobs) == [2, 4]  # every 2 steps, and none at the end (the caller stores the result)
    state = torch.load(io.BytesIO(blobs[2]), weights_only=True)
    assert state["step"] == 2 and len(state["losses"]) == 2
    resumed = distill(sd_pipe, "sd15", data, settings, resume=blobs[2])
    assert resumed.steps_done == straight.steps_done == 5
    assert resumed.losses == straight.losses
    a, b = lora_tensors(straight.weights), lora_tensors(resumed.weights)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)  # it trained
    # a checkpoint's own weights, without training further, are a 4-step run's
    at_four = result_from_checkpoint(sd_pipe, blobs[4])
    assert at_four.steps_done == 4 and at_four.losses == straight.losses[:4]
    assert at_four.weights == distill(sd_pipe, "sd15", data, DistillSettings(steps=4, batch_size=4, lr=1e-3)).weights
    with pytest.raises(ValueError, match="other settings"):
        distill(sd_pipe, "sd15", data, DistillSettings(steps=5, batch_size=2, checkpoint_every=2), resume=blobs[2])
    check()


def test_should_stop_interrupts_with_its_reason(sd_pipe):
    from engine.runner import Interrupted

    check = untouched(sd_pipe)
    calls = []

    def should_stop():
        calls.append(1)
        return "cancelled" if len(calls) == 3 else None

    with pytest.raises(Interrupted, match="cancelled at step 2") as raised:
        distill(sd_pipe, "sd15", captioned(4), DistillSettings(steps=10, batch_size=2), should_stop=should_stop)
    assert raised.value.reason == "cancelled"
    check()


def test_the_lora_loads_into_a_fresh_pipeline_and_changes_its_output(sd_pipe, sd_dir, tmp_path):
    check = untouched(sd_pipe)
    before = render_lcm(sd_pipe)
    progress = []
    result = distill(sd_pipe, "sd15", captioned(6), DistillSettings(steps=3, batch_size=2, lr=1e-2),
                     on_progress=lambda step, loss, rate: progress.append((step, loss, rate)))
    assert [p[0] for p in progress] == [1, 2, 3] and all(p[2] > 0 for p in progress)
    assert result.original_inference_steps == 50 and len(result.losses) == 3
    assert {"to_q", "ff.net.2", "conv1", "time_emb_proj"} <= set(result.trained_modules)
    assert torch.equal(render_lcm(sd_pipe), before)  # the resident pipeline renders as before
    check()

    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(result.weights)
    fresh = load_pipe(sd_dir)
    plain = render_lcm(fresh)
    fresh.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors", adapter_name="lcm")
    assert not torch.allclose(render_lcm(fresh), plain)


def test_full_model_student_has_a_guidance_embedding_and_resumes(sd_pipe):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load

    check = untouched(sd_pipe)
    data = captioned(4)
    settings = DistillSettings(steps=3, batch_size=2, full=True, checkpoint_every=2)
    blobs: dict[int, bytes] = {}
    result = distill(sd_pipe, "sd15", data, settings, on_checkpoint=lambda step, blob: blobs.__setitem__(step, blob))
    assert result.unet_config["time_cond_proj_dim"] == 256
    student = UNet2DConditionModel.from_config(result.unet_config)
    student.load_state_dict(load(result.weights))  # strict: every weight is there
    resumed = distill(sd_pipe, "sd15", data, settings, resume=blobs[2])
    a, b = load(result.weights), load(resumed.weights)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    check()


def test_a_full_model_becomes_an_lcm_model_directory_that_loads_evaluates_and_renders(sd_pipe, tmp_path):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from engine.exporting import lcm_model_files
    from engine.training.evaluation import evaluate

    check = untouched(sd_pipe)
    result = distill(sd_pipe, "sd15", captioned(4), DistillSettings(steps=2, batch_size=2, full=True, checkpoint_every=0))
    files = lcm_model_files(sd_pipe, result.unet_config, result.weights, result.original_inference_steps)
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"} <= set(files)
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    model = StableDiffusionPipeline.from_pretrained(str(tmp_path))
    assert isinstance(model.scheduler, LCMScheduler) and model.unet.config.time_cond_proj_dim == 256
    assert model.scheduler.config.original_inference_steps == result.original_inference_steps
    image = model("a red circle", num_inference_steps=2, guidance_scale=6.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    table = evaluate(sd_pipe, "sd15", None, ["a red circle", "a blue square"], steps=(1, 2), samples=4,
                     student=(result.unet_config, result.weights))
    assert {(r["sampler"], r["steps"]) for r in table["rows"]} >= {("lcm-model", 1), ("lcm-model", 2)}
    assert table["one_step_error"]["lcm-model"] > 0
    check()


def test_sdxl_lora_loads_into_a_fresh_sdxl_pipeline(model_cache, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from engine.pipelines.tiny import ensure_tiny_model

    directory = ensure_tiny_model("tiny-sdxl", model_cache)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(directory))
    pipe.set_progress_bar_config(disable=True)
    check = untouched(pipe)
    result = distill(pipe, "sdxl", captioned(4), DistillSettings(steps=2, batch_size=2, lr=1e-2))
    check()
    (tmp_path / "lora.safetensors").write_bytes(result.weights)
    plain = render_lcm(pipe)
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors", adapter_name="lcm")
    assert not torch.allclose(render_lcm(pipe), plain)


def test_evaluate_returns_the_table_and_leaves_the_pipeline(sd_pipe):
    lora = distill(sd_pipe, "sd15", captioned(4), DistillSettings(steps=2, batch_size=2, lr=1e-2)).weights
    check = untouched(sd_pipe)
    table = evaluate(sd_pipe, "sd15", lora, ["a red square", "a blue square"], steps=(1, 2), samples=4)
    json.dumps(table)
    assert table["reference"] == "teacher, DDIM 50 steps" and table["samples"] == 4
    assert "dimensions" in table["feature_space"]
    assert [(r["sampler"], r["steps"]) for r in table["rows"]] == [
        ("teacher-ddim", 1), ("teacher-ddim", 2), ("teacher-lcm", 1), ("teacher-lcm", 2),
        ("lcm-lora", 1), ("lcm-lora", 2)]
    assert all(r["frechet"] >= 0 for r in table["rows"])
    assert set(table["one_step_error"]) == {"teacher-lcm", "lcm-lora"}
    check()
    plain = evaluate(sd_pipe, "sd15", None, ["a red square"], steps=(1,), samples=2)
    assert {r["sampler"] for r in plain["rows"]} == {"teacher-ddim", "teacher-lcm"}
    check()


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # N(0, I) vs N(1, diag(4, 1, 9)): |mu|^2 + sum(1 + s^2 - 2 s) = 3 + (1 + 0 + 4)
    y = rng.normal(size=(4000, 3)) * np.array([2.0, 1.0, 3.0]) + 1.0
    assert frechet_distance(x, y) == pytest.approx(8.0, rel=0.06)


@pytest.mark.skipif(not TRAINED_TEACHER.exists(), reason="needs the trained tiny-sd teacher (engine/weights/tiny-sd)")
def test_a_short_distillation_cuts_the_one_step_error(sd_pipe):
    from engine.training import shapes

    started = time.perf_counter()
    result = distill(sd_pipe, "sd15", shapes.sample(0, 512), DistillSettings(steps=150, batch_size=8))
    trained_s = time.perf_counter() - started
    table = evaluate(sd_pipe, "sd15", result.weights, list(shapes.CAPTIONS), steps=(1,), samples=32,
                     original_inference_steps=result.original_inference_steps)
    errors = table["one_step_error"]
    print(f"150 steps in {trained_s:.1f} s; one-step error {errors}")
    assert errors["lcm-lora"] * 1.5 <= errors["teacher-lcm"]
