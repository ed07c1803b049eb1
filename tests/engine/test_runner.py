"""Tiny random-weight pipelines on the CPU, through the same loading and rendering code as real
models: sizes, determinism, batch invariance, LoRAs, and the runner matching a plain call."""

from dataclasses import replace

import numpy as np
import pytest

from farm.jobs.spec import Catalog, JobRequest, resolve_job

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runner(model_cache):
    from engine.runner import Runner

    return Runner(device="cpu", model_cache=model_cache, max_models=2)


def job(**fields):
    base = {"prompt": "a lighthouse at dusk", "seed": 100, "model": "tiny-sd"}
    base.update(fields)
    return resolve_job(JobRequest(**base), Catalog(), "tiny-sd")


def render(runner, jobs):
    return runner.render(jobs).pixels


MODELS = ["tiny-sd", "tiny-sdxl"]


@pytest.mark.parametrize("model", MODELS)
def test_output_size_and_not_blank(runner, model):
    [square] = render(runner, [job(model=model)])
    assert square.shape == (64, 64, 3) and square.dtype == np.uint8 and square.std() > 5
    [wide] = render(runner, [job(model=model, width=96, height=64)])
    assert wide.shape == (64, 96, 3)


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_pixels_other_seed_other_pixels(runner, model):
    a = render(runner, [job(model=model, seed=7)])[0]
    b = render(runner, [job(model=model, seed=7)])[0]
    c = render(runner, [job(model=model, seed=8)])[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("recipe", [{}, {"recipe": "plain", "steps": 10, "guidance": 5.0, "negative_prompt": "fog"}])
def test_an_image_is_the_same_alone_and_inside_a_batch_of_8(runner, model, recipe):
    batch = [job(model=model, seed=s, **recipe) for s in range(100, 108)]
    together = render(runner, batch)
    for position in (0, 3, 7):
        alone = render(runner, [batch[position]])[0]
        assert np.array_equal(alone, together[position]), f"seed {100 + position} differs in a batch"


@pytest.mark.parametrize("model", MODELS)
def test_mixed_prompts_in_one_call_match_their_solo_renders(runner, model):
    prompts = ("a red barn", "a blue lake", "a red barn", "fog", "moon", "sun", "sea", "sky")
    batch = [job(model=model, prompt=p, seed=5) for p in prompts]
    together = render(runner, batch)
    assert np.array_equal(together[0], together[2])
    assert not np.array_equal(together[0], together[1])
    assert np.array_equal(render(runner, [batch[1]])[0], together[1])


@pytest.mark.parametrize("model", MODELS)
def test_loras_change_the_output_and_the_stack_switches_back(runner, model):
    accelerated = render(runner, [job(model=model)])[0]
    styled = render(runner, [job(model=model, adapters=[f"{model}-toy:0.8"])])[0]
    no_lora = render(runner, [replace(job(model=model), adapters=())])[0]
    assert not np.array_equal(accelerated, no_lora)
    assert not np.array_equal(accelerated, styled)
    again = render(runner, [job(model=model)])[0]
    assert np.array_equal(accelerated, again)
    assert f"{model}/{model}-toy" in runner.resident_adapters()


@pytest.mark.parametrize("model", MODELS)
def test_the_runner_matches_a_plain_pipeline_call(runner, model):
    """The farm's path (prompt encoding once, latents, decode, uint8 on device) gives the same
    pixels as the seeds' snippet: one pipe(...) call with a generator per image."""
    from diffusers import LCMScheduler

    farm_pixels = render(runner, [job(model=model, seed=s) for s in (11, 12, 13, 14)])
    resident, _ = runner.pipeline(model)
    pipe = resident.pipe
    pipe.scheduler = LCMScheduler.from_config(resident.base_scheduler[1])
    resident.adapters.activate([(f"{model}-lcm-lora", 1.0)])
    images = pipe(["a lighthouse at dusk"] * 4, num_inference_steps=4, guidance_scale=1.0, width=64, height=64,
                  generator=[torch.Generator().manual_seed(s) for s in (11, 12, 13, 14)]).images
    for pil, pixels in zip(images, farm_pixels):
        assert np.array_equal(np.asarray(pil), pixels)


def test_resident_pipelines_are_an_lru(model_cache):
    from engine.runner import Runner

    runner = Runner(device="cpu", model_cache=model_cache, max_models=1)
    _, first_ms = runner.pipeline("tiny-sd")
    _, again_ms = runner.pipeline("tiny-sd")
    assert first_ms > 0 and again_ms == 0.0
    runner.pipeline("tiny-sdxl")
    assert runner.resident_models() == ["tiny-sdxl"]


def test_a_lora_loads_from_a_single_safetensors_file(runner, model_cache):
    """Adapter sources may be one .safetensors file, as most LoRAs are shared."""
    from engine.runner import Runner
    from engine.sources import resolve
    from farm.models.catalog import BUILTIN_ADAPTERS, AdapterEntry

    directory = resolve("builtin:tiny-sd-toy", model_cache).path
    single = f"{directory}/pytorch_lora_weights.safetensors"
    adapters = {**BUILTIN_ADAPTERS, "toy-file": AdapterEntry("toy-file", single, "tiny-sd", "style")}
    from_file = Runner(device="cpu", model_cache=model_cache, catalog=lambda: Catalog(adapters=adapters))
    styled = job(adapters=["tiny-sd-toy:0.8"])
    expected = render(runner, [styled])[0]
    styled = replace(styled, adapters=(styled.adapters[0], replace(styled.adapters[1], name="toy-file")))
    assert np.array_equal(render(from_file, [styled])[0], expected)


def test_pickled_weights_are_refused(tmp_path):
    from engine.sources import resolve
    from farm.errors import InputError

    (tmp_path / "model.ckpt").write_bytes(b"not loaded")
    with pytest.raises(InputError, match="only .safetensors"):
        resolve(str(tmp_path / "model.ckpt"), tmp_path)


@pytest.mark.parametrize("model", MODELS)
def test_the_tiny_decoder_matches_a_plain_pipeline_call_with_taesd(runner, model):
    """A preview job decodes the same latents with the tiny autoencoder: the pixels equal a plain
    pipe(...) call whose VAE was swapped for that AutoencoderTiny (what diffusers documents),
    differ from the full VAE's, and a full job afterwards still uses the full VAE."""
    from diffusers import AutoencoderTiny, LCMScheduler

    seeds = (21, 22, 23, 24)
    full = render(runner, [job(model=model, seed=s) for s in seeds])
    preview = render(runner, [job(model=model, seed=s, decoder="tiny") for s in seeds])
    resident, _ = runner.pipeline(model)
    assert isinstance(resident.tiny_decoder, AutoencoderTiny)
    assert all(p.shape == (64, 64, 3) and not np.array_equal(p, f) for p, f in zip(preview, full))
    assert np.array_equal(render(runner, [job(model=model, seed=21)])[0], full[0])

    pipe = resident.pipe
    pipe.scheduler = LCMScheduler.from_config(resident.base_scheduler[1])
    resident.adapters.activate([(f"{model}-lcm-lora", 1.0)])
    own_vae = pipe.vae
    try:
        pipe.vae = resident.tiny_decoder
        images = pipe(["a lighthouse at dusk"] * 4, num_inference_steps=4, guidance_scale=1.0, width=64, height=64,
                      generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    finally:
        pipe.vae = own_vae
    for pil, pixels in zip(images, preview):
        assert np.array_equal(np.asarray(pil), pixels)


def test_a_preview_decoder_source_can_be_overridden(model_cache, tmp_path):
    """FARM_PREVIEW_DECODERS points an arch at another TAESD directory (an offline mirror)."""
    from engine.pipelines.tiny import build_tiny_taesd
    from engine.runner import Runner

    mirror = tmp_path / "taesd-mirror"
    build_tiny_taesd(mirror, seed=999)
    default = Runner(device="cpu", model_cache=model_cache)
    mirrored = Runner(device="cpu", model_cache=model_cache, preview_decoders={"tiny-sd": str(mirror)})
    a = render(default, [job(seed=3, decoder="tiny")])[0]
    b = render(mirrored, [job(seed=3, decoder="tiny")])[0]
    assert not np.array_equal(a, b)  # other weights, other pixels: the mirror was used
    missing = Runner(device="cpu", model_cache=model_cache, preview_decoders={"tiny-sd": str(tmp_path / "nope")})
    from farm.errors import InputError

    with pytest.raises(InputError, match="no such file or directory"):
        render(missing, [job(seed=3, decoder="tiny")])


@pytest.mark.parametrize("model", MODELS)
def test_bf16_renders_the_same_image_within_rounding(model_cache, runner, model):
    """FARM_DTYPE=bf16: weights and activations in bfloat16; the image is fp32's up to rounding."""
    from engine.runner import Runner

    bf16 = Runner(device="cpu", model_cache=model_cache, dtype="bf16")
    seeds = (1, 2, 3, 4)
    got = render(bf16, [job(model=model, seed=s) for s in seeds])
    want = render(runner, [job(model=model, seed=s) for s in seeds])
    assert bf16.resident[model].pipe.unet.dtype == torch.bfloat16
    for a, b in zip(got, want):
        diff = np.abs(a.astype(int) - b)
        assert diff.mean() < 2 and diff.max() <= 16
    assert np.array_equal(render(bf16, [job(model=model, seed=1)])[0], got[0])

