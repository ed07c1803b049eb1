"""Jobs that start from images (issue 13) in the render engine, on the tiny models on the CPU:
each kind's pixels equal a plain diffusers call built from the same components, do not depend on
their micro-batch, and run the steps diffusers promises; inpainting keeps the unmasked pixels;
a tiny ControlNet steers the image, with LCM-LoRA and a style LoRA loaded at once."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from farm.jobs.spec import direct_spec

torch = pytest.importorskip("torch")
MODELS = ["tiny-sd", "tiny-sdxl"]
FAMILY = {"tiny-sd": "sd15", "tiny-sdxl": "sdxl"}


def noise_image(seed: int, size=(64, 64)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def half_mask(size=64):
    from PIL import Image

    return Image.fromarray(((np.arange(size)[None, :] >= size // 2) * 255).repeat(size, 0).astype(np.uint8))


class Inputs:
    """Input images stored as the producer stores them (canonical PNG, inputs/<sha256>.png)."""

    def __init__(self, store):
        self.store = store

    def put(self, image, *, mask=False) -> str:
        from engine.inputs import check_image
        from farm.jobs.kinds import input_key

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        checked = check_image("mask_image" if mask else "init_image", buffer.getvalue(), "test", mask=mask)
        self.store.put(input_key(checked.sha256), checked.data, "image/png")
        return checked.sha256

    def get(self, sha256: str):
        from PIL import Image

        from farm.jobs.kinds import input_key

        image = Image.open(io.BytesIO(self.store.get(input_key(sha256))))
        image.load()
        return image


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from farm.storage import open_store

    return open_store(f"file://{tmp_path_factory.mktemp('store')}")


@pytest.fixture(scope="module")
def inputs(store):
    return Inputs(store)


@pytest.fixture(scope="module")
def runner(model_cache, store):
    from engine.runner import Runner

    return Runner(device="cpu", model_cache=model_cache, max_models=2, store_url=store.url)


def spec(model: str, kind: str, seed: int = 100, style: float | None = None, **fields):
    adapters = [(f"{model}-lcm-lora", 1.0, "accelerator")] + ([(f"{model}-toy", style, "style")] if style else [])
    return replace(direct_spec(model=model, family=FAMILY[model], seed=seed, adapters=adapters), kind=kind, **fields)


def plain(runner, model: str, kind: str, *, controlnet=None, style: float | None = None, steps: int = 4, **call):
    """A plain diffusers call of the kind's pipeline class, made of the resident pipeline's
    components (diffusers' documented way), with the recipe's scheduler and LoRA stack."""
    import diffusers
    from diffusers import LCMScheduler

    resident, _ = runner.pipeline(model)
    pipe = resident.pipe
    prefix = "StableDiffusion" if model == "tiny-sd" else "StableDiffusionXL"
    name = {"img2img": "Img2Img", "inpaint": "Inpaint", "controlnet": "ControlNet"}[kind]
    cls = getattr(diffusers, f"{prefix}{name}Pipeline" if kind != "controlnet" else f"{prefix}ControlNetPipeline")
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    other = cls(**pipe.components, **extra)
    other.set_progress_bar_config(disable=True)
    other.scheduler = LCMScheduler.from_config(resident.base_scheduler[1])
    stack = [(f"{model}-lcm-lora", 1.0)] + ([(f"{model}-toy", style)] if style else [])
    resident.adapters.activate(stack, f"{model}-lcm-lora")
    seeds = call.pop("seeds")
    with torch.inference_mode():
        images = other(["a lighthouse at dusk"] * len(seeds), num_inference_steps=steps, guidance_scale=1.0,
                       generator=[torch.Generator().manual_seed(s) for s in seeds], **call).images
    return [np.asarray(image) for image in images]


@pytest.mark.parametrize("model", MODELS)
def test_img2img_is_a_plain_img2img_call_and_runs_steps_times_strength(runner, inputs, model):
    shas = [inputs.put(noise_image(i)) for i in range(4)]
    jobs = [spec(model, "img2img", seed=10 + i, init_image=sha, strength=0.5) for i, sha in enumerate(shas)]
    steps: list[int] = []
    farm = runner.render(jobs, should_stop=lambda: steps.append(1)).pixels  # called once per step
    assert len(steps) == 2  # int(4 steps x 0.5), as diffusers runs it
    expected = plain(runner, model, "img2img", image=[inputs.get(s) for s in shas], strength=0.5,
                     seeds=[10, 11, 12, 13])
    for got, want in zip(farm, expected):
        assert np.array_equal(got, want)
    stronger = runner.render([replace(jobs[0], strength=1.0)]).pixels[0]
    assert not np.array_equal(stronger, farm[0])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("blur", [0, 3])
def test_inpaint_keeps_the_unmasked_pixels_and_is_a_plain_inpaint_call(runner, inputs, model, blur):
    """diffusers blends the init latents back outside the mask at every step; after the VAE the
    farm lays the result over the init image through the (blurred) mask as A1111 does: where the
    mask is black the pixels are the init image's, exactly, and the whole image equals a plain
    diffusers inpaint call plus that overlay (``image_processor.apply_overlay``)."""
    inits = [noise_image(20 + i) for i in range(4)]
    shas = [inputs.put(image) for image in inits]
    mask = inputs.put(half_mask(), mask=True)
    # strength 1.0 runs every step: 2 LCM steps blend the init latents back twice, as 4 would 4 times
    jobs = [spec(model, "inpaint", seed=30 + i, init_image=sha, mask_image=mask, strength=1.0, mask_blur=blur,
                 steps=2) for i, sha in enumerate(shas)]
    farm = runner.render(jobs).pixels
    stored = [inputs.get(s) for s in shas]
    mask_image = inputs.get(mask)
    resident, _ = runner.pipeline(model)
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    used = processor.blur(mask_image, blur_factor=blur) if blur else mask_image
    expected = plain(runner, model, "inpaint", image=stored, mask_image=[used] * 4, strength=1.0, width=64, height=64,
                     seeds=[30, 31, 32, 33], steps=2)
    from PIL import Image

    keep = np.asarray(used) == 0  # black: kept
    assert keep.sum() > 1000
    for got, want, init in zip(farm, expected, stored):
        overlaid = np.asarray(processor.apply_overlay(used, init, Image.fromarray(want)))
        assert np.array_equal(got, overlaid)
        assert np.array_equal(got[keep], np.asarray(init)[keep])  # the promise: unmasked pixels are kept
        repaint = np.asarray(used) == 255
        assert not np.array_equal(got[repaint], np.asarray(init)[repaint])


@pytest.mark.parametrize("model", MODELS)
def test_controlnet_steers_the_image_with_lcm_lora_and_a_style_lora_at_once(runner, inputs, model):
    controls = [inputs.put(noise_image(40 + i)) for i in range(4)]
    # 2 LCM steps, not 4: the ControlNet's residuals go into every step, and 2 show it
    jobs = [spec(model, "controlnet", seed=50 + i, style=0.8, control_image=sha, controlnet=f"{model}-canny",
                 control_scale=0.8, steps=2) for i, sha in enumerate(controls)]
    rendered = runner.render(jobs)
    farm = rendered.pixels
    assert rendered.environment["adapter_sha256"].keys() == {f"{model}-lcm-lora", f"{model}-toy"}
    controlnet = runner.controlnets.get(f"{model}-canny")
    expected = plain(runner, model, "controlnet", controlnet=controlnet, style=0.8,
                     image=[inputs.get(s) for s in controls], controlnet_conditioning_scale=0.8,
                     width=64, height=64, seeds=[50, 51, 52, 53], steps=2)
    for got, want in zip(farm, expected):
        assert np.array_equal(got, want)
    # the tiny ControlNet's output layers are not zero: the control image and the scale change the image
    off = runner.render([replace(jobs[0], control_scale=0.0)]).pixels[0]
    other = runner.render([replace(jobs[0], control_image=controls[1])]).pixels[0]
    assert not np.array_equal(off, farm[0]) and not np.array_equal(other, farm[0])
    # and the same seed without the ControlNet is a plain txt2img image, untouched by the ControlNet pipeline
    txt2img = runner.render([spec(model, "txt2img", seed=50, style=0.8, steps=2)]).pixels[0]
    assert np.array_equal(txt2img, runner.render([spec(model, "txt2img", seed=50, style=0.8, steps=2)]).pixels[0])


@pytest.mark.parametrize("model", MODELS)
def test_upscale_resizes_with_lanczos_then_runs_img2img_at_the_new_size(runner, inputs, model):
    from PIL import Image

    sha = inputs.put(noise_image(60))
    job = spec(model, "upscale", seed=61, init_image=sha, strength=0.5, upscale=2.0, width=128, height=128)
    [farm] = runner.render([job]).pixels
    assert farm.shape == (128, 128, 3)
    resized = inputs.get(sha).resize((128, 128), Image.LANCZOS)
    expected = plain(runner, model, "img2img", image=[resized] * 4, strength=0.5, seeds=[61, 0, 0, 0])
    assert np.array_equal(farm, expected[0])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["img2img", "inpaint", "controlnet", "upscale"])
def test_an_image_job_is_the_same_alone_and_inside_a_batch_of_8(runner, inputs, model, kind):
    shas = [inputs.put(noise_image(70 + i)) for i in range(8)]
    mask = inputs.put(half_mask(), mask=True)

    def job(i):
        # 2 denoising steps each (controlnet: 2 of 2; the others: int(4 x strength 0.6)): the per-image
        # noise an LCM step adds before the next is drawn once, as at more steps
        if kind == "controlnet":
            return spec(model, kind, seed=80 + i, control_image=shas[i], controlnet=f"{model}-canny", control_scale=1.0,
                        steps=2)
        extra = {"mask_image": mask, "mask_blur": 2} if kind == "inpaint" else {}
        if kind == "upscale":
            extra = {"upscale": 1.5, "width": 96, "height": 96}
        return spec(model, kind, seed=80 + i, init_image=shas[i], strength=0.6, **extra)

    together = runner.render([job(i) for i in range(8)]).pixels
    for position in (0, 5):
        assert np.array_equal(runner.render([job(position)]).pixels[0], together[position]), position


def test_a_controlnet_loads_from_one_safetensors_file(runner, inputs, model_cache, store):
    """A single file in diffusers' key layout (the tiny ControlNet's own weights) renders the same
    pixels as its directory: its config is derived from the arch's UNet, offline."""
    from engine.runner import Runner
    from engine.sources import resolve
    from farm.jobs.spec import Catalog
    from farm.models.catalog import BUILTIN_CONTROLNETS, ControlNetEntry

    directory = resolve("builtin:tiny-sd-canny", model_cache).path
    single = f"{directory}/diffusion_pytorch_model.safetensors"
    controlnets = {**BUILTIN_CONTROLNETS, "mine": ControlNetEntry("mine", single, "tiny-sd", layout="single-file",
                                                                  builtin=False)}
    from_file = Runner(device="cpu", model_cache=model_cache, store_url=store.url,
                       catalog=lambda: Catalog(controlnets=controlnets))
    job = spec("tiny-sd", "controlnet", seed=5, control_image=inputs.put(noise_image(90)), controlnet="tiny-sd-canny",
               control_scale=1.0, steps=2)  # the same weights or not: 2 steps show it as 4 do
    expected = runner.render([job]).pixels[0]
    assert np.array_equal(from_file.render([replace(job, controlnet="mine")]).pixels[0], expected)


def test_inputs_are_fetched_once_and_checked_against_their_sha256(model_cache, store, inputs, tmp_path):
    import hashlib

    from engine.inputs import InputCache
    from farm.errors import InfrastructureError
    from farm.jobs.kinds import input_key

    sha = inputs.put(noise_image(95))
    cache = InputCache(tmp_path / "inputs", store.url)
    first = np.asarray(cache.image(sha))
    assert cache.stats == {"hits": 0, "misses": 1} and (tmp_path / "inputs" / f"{sha}.png").is_file()
    assert np.array_equal(np.asarray(cache.image(sha)), first) and cache.stats["hits"] == 1
    (tmp_path / "inputs" / f"{sha}.png").write_bytes(b"corrupt")  # a damaged cache entry is fetched again
    assert np.array_equal(np.asarray(cache.image(sha)), first) and cache.stats["misses"] == 2
    other = inputs.put(noise_image(96))
    store.put(input_key(other), store.get(input_key(sha)), "image/png")  # an object that is not what its name says
    with pytest.raises(InfrastructureError, match="does not match"):
        InputCache(tmp_path / "fresh", store.url).data(other)
    assert hashlib.sha256(store.get(input_key(sha))).hexdigest() == sha
