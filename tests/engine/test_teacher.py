"""The tiny-sd teacher has learned something (issue 14): its committed weights are the ones recorded,
its renders show what the caption says, its VAE reconstructs and its latents have unit variance.
The shapes set it was trained on is deterministic, and its caption check reads the truth back."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from engine.training import shapes

torch = pytest.importorskip("torch")

PROMPTS = ["a red circle", "a blue square", "a yellow triangle", "a green square"]
SEEDS = [0, 1, 2, 3]


# -- the shapes set -----------------------------------------------------------------------------------

def test_the_shapes_set_is_deterministic_and_captioned():
    first, again, other = shapes.sample(7, 6), shapes.sample(7, 6), shapes.sample(8, 6)
    assert all(np.array_equal(a, b) and c == d for (a, c), (b, d) in zip(first, again))
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))
    for pixels, caption in first:
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8 and caption in shapes.CAPTIONS


def test_the_caption_check_reads_the_truth_back():
    data = shapes.sample(11, 60)
    assert all(shapes.caption_matches(pixels, caption, shape=True) for pixels, caption in data)
    pixels, caption = data[0]
    colour, shape = shapes.parse_caption(caption)
    other = next(c for c in shapes.CAPTIONS if shapes.parse_caption(c)[0] != colour)
    assert not shapes.caption_matches(pixels, other)
    blank = np.full((64, 64, 3), 40, dtype=np.uint8)
    assert shapes.describe(blank) == (None, None) and not shapes.caption_matches(blank, caption)
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.parse_caption("a lighthouse at dusk")


def test_the_dataset_is_written_as_trainers_read_it(tmp_path):
    from PIL import Image

    shapes.write_dataset(tmp_path, 3, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000.png", "0000.txt", "0001.png", "0001.txt",
                                                          "0002.png", "0002.txt"]
    [(pixels, caption), *_] = shapes.sample(5, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "0000.png")), pixels)
    assert (tmp_path / "0000.txt").read_text().strip() == caption


# -- the committed weights ----------------------------------------------------------------------------

def test_the_committed_weights_match_their_sha256sums():
    from engine.pipelines.tiny import TINY_SD_WEIGHTS

    lines = (TINY_SD_WEIGHTS / "SHA256SUMS").read_text().splitlines()
    sums = {name: digest for digest, name in (line.split() for line in lines)}
    assert set(sums) == {"unet.safetensors", "vae.safetensors"}
    for name, digest in sums.items():
        assert hashlib.sha256((TINY_SD_WEIGHTS / name).read_bytes()).hexdigest() == digest, name
    report = json.loads((TINY_SD_WEIGHTS / "training.json").read_text())
    assert {name: entry["sha256"] for name, entry in report["files"].items()} == sums
    assert sum((TINY_SD_WEIGHTS / name).stat().st_size for name in sums) < 8 * 2**20  # a few MB


def test_a_weight_file_that_does_not_match_is_refused(tmp_path):
    from engine.pipelines.tiny import TINY_SD_WEIGHTS, TeacherWeightsError, build_tiny_sd

    copy = shutil.copytree(TINY_SD_WEIGHTS, tmp_path / "weights")
    data = bytearray((copy / "vae.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "vae.safetensors").write_bytes(bytes(data))
    with pytest.raises(TeacherWeightsError, match="vae.safetensors has sha256 .* but .*SHA256SUMS says"):
        build_tiny_sd(tmp_path / "model", weights=copy)
    (copy / "unet.safetensors").unlink()
    with pytest.raises(TeacherWeightsError, match="cannot read .*unet.safetensors"):
        build_tiny_sd(tmp_path / "model", weights=copy)


# -- the built model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(model_cache):
    from diffusers import StableDiffusionPipeline

    from engine.pipelines.tiny import ensure_tiny_model

    directory = ensure_tiny_model("tiny-sd", model_cache)
    pipe = StableDiffusionPipeline.from_pretrained(str(directory), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.shipped_scheduler = pipe.scheduler  # the model's own (Euler), which the tests swap out and back
    return pipe


def renders(pipe, prompt, *, steps, scheduler=None, guidance=5.0):
    pipe.scheduler = scheduler or pipe.shipped_scheduler
    out = pipe([prompt] * len(SEEDS), num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
               generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="np").images
    return (out * 255).round().astype(np.uint8)


def test_renders_show_the_captions_colour(pipe):
    """Plain Euler, 25 steps, guidance 5: a clear majority of renders per prompt show its colour,
    and most show its shape too (the outline check is stricter than the eye: a rounded square
    reads as a circle)."""
    both = 0
    for prompt in PROMPTS:
        read = [shapes.describe(pixels) for pixels in renders(pipe, prompt, steps=25)]
        assert sum(colour == shapes.parse_caption(prompt)[0] for colour, _ in read) >= 3, (prompt, read)  # measured 4 of 4
        both += sum(found == shapes.parse_caption(prompt) for found in read)
    assert both >= 8  # measured 10 of 16


def test_two_ddim_steps_are_far_from_what_fifty_steps_converge_to(pipe):
    """What distillation has to recover: DDIM (SD1.5's settings, from the model's scheduler config)
    at 25 steps is close to its 50-step result; at 2 steps it is far off and misses colours."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(pipe.shipped_scheduler.config)
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False
    out = {steps: {p: renders(pipe, p, steps=steps, scheduler=ddim) for p in PROMPTS} for steps in (2, 25, 50)}
    error = {steps: np.mean([((out[steps][p] / 255.0 - out[50][p] / 255.0) ** 2).mean() for p in PROMPTS])
             for steps in (2, 25)}
    assert error[2] > 0.015 and error[2] > 20 * error[25], error  # measured: 0.033 and 0.00005
    colour = {steps: sum(shapes.caption_matches(x, p) for p in PROMPTS for x in out[steps][p]) for steps in (2, 25)}
    assert colour[25] >= 14 and colour[2] <= 12, colour  # measured: 16 and 8 of 16


def test_the_vae_reconstructs_shapes_and_its_latents_have_unit_variance(pipe):
    from engine.training.teacher import images_to_tensor, tensor_to_images

    data = shapes.sample(1234, 32)
    x = images_to_tensor([pixels for pixels, _ in data])
    with torch.no_grad():
        posterior = pipe.vae.encode(x).latent_dist
        recon = pipe.vae.decode(posterior.mode()).sample
        latents = posterior.sample(torch.Generator().manual_seed(0)) * pipe.vae.config.scaling_factor
    assert float(torch.nn.functional.mse_loss(recon, x)) < 0.02  # measured 0.0104 (pixels in [-1, 1])
    back = tensor_to_images(recon)
    assert sum(shapes.caption_matches(p, c, shape=True) for p, (_, c) in zip(back, data)) >= 28  # measured 30 of 32
    assert 0.7 < float(latents.std()) < 1.4  # measured 1.02


def test_the_training_code_writes_weights_the_builder_loads(tmp_path):
    """A few steps of the real training run (scripts/train_tiny_teacher.py's code), saved and built."""
    from diffusers import AutoencoderKL

    from engine.pipelines.tiny import build_tiny_sd
    from engine.training import teacher

    threads = torch.get_num_threads()
    config = teacher.TrainConfig(images=16, vae_steps=2, vae_batch=2, unet_steps=2, batch=4, warmup=1, threads=1)
    try:
        unet, vae, report = teacher.train(config, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    sums = teacher.save(tmp_path / "weights", unet, vae, report)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [
        "SHA256SUMS", "training.json", "unet.safetensors", "vae.safetensors"]
    build_tiny_sd(tmp_path / "model", weights=tmp_path / "weights")
    built = AutoencoderKL.from_pretrained(str(tmp_path / "model"), subfolder="vae")
    assert built.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert json.loads((tmp_path / "weights" / "training.json").read_text())["files"]["unet.safetensors"]["sha256"] == sums[
        "unet.safetensors"]
