"""The flow-matching families (FLUX, SD3) on their tiny random-weight versions, through the same
loading and rendering code as FLUX.1-schnell, FLUX.1-dev and SD3.5 Large Turbo: every recipe with
its scheduler, steps and guidance, batch invariance, one text encoding per distinct prompt, the
farm's pixels equal to a plain pipeline call, LoRAs through peft on the transformer (switched,
fused and unfused), previews, offload, and the dtype picked under FARM_DTYPE=auto."""

from dataclasses import replace

import numpy as np
import pytest

from farm.jobs.spec import Catalog, JobRequest, direct_spec, resolve_job
from tests.test_layers import real_layers

torch = pytest.importorskip("torch")

# (recipe, model, request options): every flow recipe on its tiny model
CASES = [
    ("schnell", "tiny-flux", {}),
    ("schnell", "tiny-flux", {"steps": 1}),
    ("sd35-turbo", "tiny-sd3", {}),
    ("flux-hyper", "tiny-flux-dev", {}),
    ("flux-hyper", "tiny-flux-dev", {"steps": 10, "guidance": 2.0}),
]
MODELS = {"tiny-flux": {}, "tiny-flux-dev": {}, "tiny-sd3": {}}


@pytest.fixture(scope="module")
def runner(model_cache):
    from engine.runner import Runner

    return Runner(device="cpu", model_cache=model_cache, max_models=3)


def job(**fields):
    base = {"prompt": "a lighthouse at dusk", "seed": 100, "model": "tiny-flux"}
    base.update(fields)
    return resolve_job(JobRequest(**base), Catalog(), "tiny-sd")


def render(runner, jobs):
    return runner.render(jobs).pixels


@pytest.mark.parametrize("model", list(MODELS))
def test_the_tiny_vae_downsamples_by_8_so_64px_is_an_8x8_latent(runner, model):
    """What keeps a 64 px render well under a second on a CPU (measured, not asserted here: speed
    is shown in benchmarks, not timed tests): the latent is 8x8, as with the real VAEs' factor 8."""
    resident, _ = runner.pipeline(model)
    pipe = resident.pipe
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.shift_factor == 0.0  # set: the pipelines add it at decode
    with torch.inference_mode():
        latent = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert latent.shape == (1, 16, 8, 8)
    [pixels] = render(runner, [job(model=model)])
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8 and pixels.std() > 5


@pytest.mark.parametrize("model", list(MODELS))
def test_sizes_seeds_and_determinism(runner, model):
    [wide] = render(runner, [job(model=model, width=96, height=64)])
    assert wide.shape == (64, 96, 3)
    a, b, c = (render(runner, [job(model=model, seed=s)])[0] for s in (7, 7, 8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("recipe, model, options", CASES, ids=[f"{r}-{m}-{o}" for r, m, o in CASES])
def test_every_flow_recipe_renders_with_its_scheduler_steps_and_guidance(runner, recipe, model, options):
    spec = job(model=model, recipe=recipe, negative_prompt="fog", **options)
    assert spec.warnings  # a negative prompt without CFG is accepted and ignored, with a warning
    resident, _ = runner.pipeline(model)
    calls = []
    hook = resident.pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((kwargs["hidden_states"].shape[0], kwargs.get("guidance"))),
        with_kwargs=True)
    try:
        [pixels] = render(runner, [spec])
    finally:
        hook.remove()
    assert type(resident.pipe.scheduler).__name__ == spec.scheduler == "FlowMatchEulerDiscreteScheduler"
    assert len(calls) == spec.steps and {n for n, _ in calls} == {runner.bucket}  # no CFG rows
    guidance = {g.unique().item() if g is not None else None for _, g in calls}
    assert guidance == ({spec.guidance} if model == "tiny-flux-dev" else {None})  # dev: distilled guidance
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1
    active = set(resident.pipe.get_active_adapters()) if resident.adapters.enabled and spec.adapters else set()
    assert active == {a.name for a in spec.adapters}
    if recipe == "flux-hyper":
        assert [(a.name, a.weight) for a in spec.adapters] == [("tiny-flux-hyper-8step", 0.125)]


def test_t5_sequence_length_comes_from_the_recipe(runner):
    """schnell encodes 256 T5 tokens, FLUX.1-dev's recipe 512, SD3.5 Turbo 256."""
    lengths = []
    for model, recipe in (("tiny-flux", "schnell"), ("tiny-flux-dev", "flux-hyper"), ("tiny-sd3", "sd35-turbo")):
        resident, _ = runner.pipeline(model)
        t5 = resident.pipe.text_encoder_3 if model == "tiny-sd3" else resident.pipe.text_encoder_2
        hook = t5.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
        try:
            render(runner, [job(model=model, recipe=recipe)])
        finally:
            hook.remove()
    assert lengths == [256, 512, 256]


@pytest.mark.parametrize("model", list(MODELS))
def test_an_image_is_the_same_alone_and_inside_a_batch_of_8(runner, model):
    style = {"adapters": [f"{'tiny-sd3' if model == 'tiny-sd3' else 'tiny-flux'}-toy:0.8"]}
    batch = [job(model=model, seed=s, **style) for s in range(100, 108)]
    together = render(runner, batch)
    for position in (0, 3, 7):
        alone = render(runner, [batch[position]])[0]
        assert np.array_equal(alone, together[position]), f"seed {100 + position} differs in a batch"


def test_sd3_with_cfg_is_batch_invariant_and_encodes_the_negative_prompt(runner):
    """SD3 runs CFG above guidance 1 (not through a recipe: SD3.5 Large Turbo has none), which
    doubles the transformer's rows; the negative prompt changes the image."""
    def spec(seed, negative="fog"):
        return direct_spec(model="tiny-sd3", family="sd3", seed=seed, steps=4, guidance=4.0, negative_prompt=negative,
                           recipe="sd35-turbo", scheduler="FlowMatchEulerDiscreteScheduler")
    resident, _ = runner.pipeline("tiny-sd3")
    rows = []
    hook = resident.pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        together = render(runner, [spec(s) for s in range(100, 108)])
    finally:
        hook.remove()
    assert set(rows) == {16}
    assert np.array_equal(render(runner, [spec(105)])[0], together[5])
    assert not np.array_equal(render(runner, [spec(105, negative="sunlight")])[0], together[5])


@pytest.mark.parametrize("model, encoder", [("tiny-flux", "text_encoder_2"), ("tiny-sd3", "text_encoder_3")])
def test_one_text_encoding_per_distinct_prompt(runner, model, encoder):
    prompts = ("a red barn", "a blue lake", "a red barn", "a red barn", "a blue lake", "a red barn", "fog", "fog")
    batch = [job(model=model, prompt=p, seed=5) for p in prompts]
    resident, _ = runner.pipeline(model)
    rows = []
    hook = getattr(resident.pipe, encoder).register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        together = render(runner, batch)
    finally:
        hook.remove()
    assert rows == [4]  # three distinct prompts, padded to the batch bucket, encoded once
    assert np.array_equal(together[0], together[2]) and not np.array_equal(together[0], together[1])
    assert np.array_equal(render(runner, [batch[1]])[0], together[1])


@pytest.mark.parametrize("model, recipe, options", [
    ("tiny-flux", "schnell", {"max_sequence_length": 256, "guidance_scale": 0.0}),
    ("tiny-flux-dev", "flux-hyper", {"max_sequence_length": 512, "guidance_scale": 3.5}),
    ("tiny-sd3", "sd35-turbo", {"max_sequence_length": 256, "guidance_scale": 0.0}),
])
def test_the_runner_matches_a_plain_pipeline_call(model_cache, model, recipe, options):
    """The farm's path (prompts encoded once, packed latents, its own decode) gives the pixels of
    the seeds' snippet: one pipe(...) call with a generator per image. The VAE's shift factor is
    set to 0.1 here so the decode's arithmetic is checked (the tiny models ship 0.0)."""
    from engine.runner import Runner

    runner = Runner(device="cpu", model_cache=model_cache, max_models=1)
    resident, _ = runner.pipeline(model)
    pipe = resident.pipe
    pipe.vae.register_to_config(shift_factor=0.1)
    seeds = (11, 12, 13, 14)
    specs = [job(model=model, recipe=recipe, seed=s) for s in seeds]
    farm_pixels = render(runner, specs)
    resident.adapters.activate([(a.name, a.weight) for a in specs[0].adapters])
    images = pipe(["a lighthouse at dusk"] * 4, num_inference_steps=specs[0].steps, width=64, height=64,
                  generator=[torch.Generator().manual_seed(s) for s in seeds], **options).images
    for pil, pixels in zip(images, farm_pixels):
        assert np.array_equal(np.asarray(pil), pixels)


@pytest.mark.parametrize("model, styles", [("tiny-flux", ("tiny-flux-toy", "tiny-flux-ink")),
                                           ("tiny-sd3", ("tiny-sd3-toy", "tiny-sd3-ink"))])
def test_style_loras_on_the_transformer_change_the_output_and_switch_back(runner, model, styles):
    plain = render(runner, [job(model=model)])[0]
    toy = render(runner, [job(model=model, adapters=[f"{styles[0]}:0.8"])])[0]
    both = render(runner, [job(model=model, adapters=[f"{styles[0]}:0.8", f"{styles[1]}:0.5"])])[0]
    assert not np.array_equal(plain, toy) and not np.array_equal(toy, both)
    assert np.array_equal(plain, render(runner, [job(model=model)])[0])
    resident, _ = runner.pipeline(model)
    assert f"{model}/{styles[0]}" in runner.resident_adapters()
    assert resident.adapters.loaded[styles[0]] > 0  # bytes of its LoRA layers in the transformer
    lora_layers = [n for n, _ in resident.pipe.transformer.named_modules() if n.endswith(".lora_A")]
    assert lora_layers


def test_the_hyper_lora_changes_the_image_and_fuses_and_unfuses_exactly(model_cache, runner):
    from engine.runner import Runner

    hyper = job(model="tiny-flux-dev", recipe="flux-hyper")
    without = replace(hyper, adapters=())
    accelerated, plain = render(runner, [hyper])[0], render(runner, [without])[0]
    assert not np.array_equal(accelerated, plain)
    fused = Runner(device="cpu", model_cache=model_cache, max_models=1, fuse=True)
    styled = job(model="tiny-flux-dev", recipe="flux-hyper", adapters=["tiny-flux-toy:0.8"])
    got = render(fused, [styled])[0]
    adapters = fused.resident["tiny-flux-dev"].adapters
    assert adapters.fused == (("tiny-flux-hyper-8step", 0.125),) and list(adapters.loaded) == ["tiny-flux-toy"]
    assert np.abs(got.astype(int) - render(runner, [styled])[0]).max() <= 3
    assert np.array_equal(render(fused, [without])[0], plain)  # unfused: the original weights, bit for bit
    assert adapters.fused is None


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_previews_decode_with_a_16_channel_tiny_autoencoder(runner, model):
    full = render(runner, [job(model=model)])[0]
    [preview] = render(runner, [job(model=model, decoder="tiny")])
    assert preview.shape == (64, 64, 3) and not np.array_equal(preview, full)
    assert runner.resident[model].tiny_decoder.config.latent_channels == 16


def test_model_offload_renders_the_same_pixels(model_cache, runner):
    """FARM_OFFLOAD=model: the T5 encoder and the transformer move to the device only while they
    run (on the CPU the hooks run too); across a LoRA switch."""
    from engine.runner import Runner

    offloaded = Runner(device="cpu", model_cache=model_cache, max_models=1, offload="model")
    for adapters in ((), ("tiny-flux-toy:0.8",), ()):
        specs = [job(seed=s, adapters=adapters) for s in (1, 2)]
        assert all(np.array_equal(a, b) for a, b in zip(render(runner, specs), render(offloaded, specs)))
    assert hasattr(offloaded.resident["tiny-flux"].pipe.text_encoder_2, "_hf_hook")


def test_auto_dtype_picks_bf16_for_flux_and_sd3_on_cuda(model_cache):
    from engine.pipelines import flux, sd, sd3, sdxl
    from engine.runner import Runner

    runner = Runner(device="cpu", model_cache=model_cache)
    assert {runner.model_dtype(m) for m in (flux, sd3, sd, sdxl)} == {torch.float32}  # CPU: fp32
    runner.is_cuda = True  # what the choice sees on a CUDA worker
    assert [runner.model_dtype(m) for m in (flux, sd3, sd, sdxl)] == [torch.bfloat16, torch.bfloat16,
                                                                       torch.float32, torch.float32]
    cuda = Runner(device="cpu", model_cache=model_cache, dtype="auto")
    cuda.is_cuda, cuda.dtype = True, torch.float16  # auto on CUDA: fp16 for the UNet families
    assert (cuda.model_dtype(flux), cuda.model_dtype(sdxl)) == (torch.bfloat16, torch.float16)
    pinned = Runner(device="cpu", model_cache=model_cache, dtype="fp16")
    pinned.is_cuda = True
    assert pinned.model_dtype(flux) == torch.float16  # an explicit FARM_DTYPE wins


def test_the_render_records_the_dtype_and_a_vae_without_shift_factor_is_refused(model_cache, tmp_path):
    import shutil

    from engine.runner import Runner
    from engine.sources import resolve
    from farm.errors import InputError
    from farm.models.catalog import BUILTIN_MODELS, ModelEntry

    runner = Runner(device="cpu", model_cache=model_cache, max_models=1)
    assert runner.render([job()]).environment["dtype"] == "float32"
    broken = tmp_path / "no-shift"
    shutil.copytree(resolve("builtin:tiny-flux", model_cache).path, broken)
    config = broken / "vae" / "config.json"
    config.write_text(config.read_text().replace('"shift_factor": 0.0', '"shift_factor": null'))
    models = {**BUILTIN_MODELS, "no-shift": ModelEntry("no-shift", str(broken), "flux", "tiny-flux", 64, "turbo",
                                                       builtin=False)}
    other = Runner(device="cpu", model_cache=model_cache, catalog=lambda: Catalog(models=models))
    with pytest.raises(InputError, match="no shift_factor"):
        other.pipeline("no-shift")


# -- the layer tables LoRAs are checked against at add (farm.models.layers) --------------------------------
linear_and_conv_layers = real_layers  # the UNet layer tables' reader (tests/test_layers.py)


@pytest.mark.parametrize("arch", ["flux", "tiny-flux", "sd3", "tiny-sd3"])
def test_the_transformer_tables_are_the_modules_diffusers_builds(arch):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from farm.models.layers import TRANSFORMER_CONFIGS, transformer_layers

    kind, config = TRANSFORMER_CONFIGS[arch]
    cls = FluxTransformer2DModel if kind == "flux" else SD3Transformer2DModel
    with torch.device("meta"):
        model = cls(**config)
    table = {name: (layer.kind, layer.fan_in, layer.fan_out, layer.kernel)
             for name, layer in transformer_layers(arch).items()}
    assert table == linear_and_conv_layers(model)


@pytest.mark.parametrize("arch, model", [("tiny-flux", "tiny-flux-dev"), ("tiny-sd3", "tiny-sd3")])
def test_the_tiny_tables_are_the_built_tiny_models(model_cache, arch, model):
    import json
    from pathlib import Path

    from engine.sources import resolve
    from farm.models.layers import TEXT_ENCODERS, TRANSFORMER_CONFIGS

    built = Path(resolve(f"builtin:{model}", model_cache).path)
    transformer = json.loads((built / "transformer" / "config.json").read_text())
    for key, value in TRANSFORMER_CONFIGS[arch][1].items():
        assert transformer[key] == value, f"{model} transformer {key}"
    for component, config in TEXT_ENCODERS[arch]:
        encoder = json.loads((built / component / "config.json").read_text())
        assert {k: encoder[k] for k in config} == config, f"{model} {component}"


def test_the_flux_original_names_are_the_ones_diffusers_kohya_converter_maps():
    """Every Black Forest Labs layer farm.models.loras accepts in a Kohya FLUX file is converted by
    load_lora_weights' converter onto diffusers layers of the same table (real FLUX sizes)."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from farm.models.layers import flux_original_layers, transformer_layers

    state = {}
    for name in flux_original_layers("flux"):
        if name.startswith(("double_blocks.", "single_blocks.")) and not name.startswith(("double_blocks.0.",
                                                                                          "single_blocks.0.")):
            continue  # one block of each kind is enough
        key = "lora_unet_" + name.replace(".", "_")
        layer = flux_original_layers("flux")[name]
        state[f"{key}.lora_down.weight"] = torch.zeros(1, layer.fan_in)
        state[f"{key}.lora_up.weight"] = torch.zeros(layer.fan_out, 1)
    converted = _convert_kohya_flux_lora_to_diffusers(state)
    modules = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted}
    assert modules and modules <= set(transformer_layers("flux"))
    assert "single_transformer_blocks.0.proj_mlp" in modules and "transformer_blocks.0.attn.add_v_proj" in modules


def test_a_kohya_flux_lora_registers_and_renders_through_diffusers_converter(model_cache, tmp_path):
    """A Kohya-layout FLUX LoRA (Black Forest Labs' names, lora_down/lora_up/alpha) is checked at
    add and converted by load_lora_weights. (diffusers' converter splits a single block's fused
    ``linear1`` at FLUX.1's real widths, so this tiny file leaves ``linear1`` out.)"""
    from safetensors.torch import save_file

    from engine.runner import Runner
    from farm.models.catalog import BUILTIN_ADAPTERS, AdapterEntry
    from farm.models.layers import flux_original_layers
    from farm.models.loras import inspect_lora

    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for name, layer in flux_original_layers("tiny-flux").items():
        if name.startswith("double_blocks.0.") or name.endswith(("linear2", "modulation.lin")):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(4, layer.fan_in, generator=generator) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(layer.fan_out, 4, generator=generator) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    path = tmp_path / "kohya_flux.safetensors"
    save_file(tensors, str(path))
    lora = inspect_lora(path, "tiny-flux")
    assert lora.layout == "kohya" and lora.modules == len(tensors) // 3
    adapters = {**BUILTIN_ADAPTERS, "kohya-flux": AdapterEntry("kohya-flux", str(path), "tiny-flux", "style",
                                                               layout="kohya", builtin=False)}
    runner = Runner(device="cpu", model_cache=model_cache, max_models=1, catalog=lambda: Catalog(adapters=adapters))
    plain = render(runner, [job()])[0]
    styled = render(runner, [resolve_job(JobRequest(prompt="a lighthouse at dusk", seed=100, model="tiny-flux",
                                                    adapters=["kohya-flux:1.0"]), Catalog(adapters=adapters), "x")])[0]
    assert not np.array_equal(plain, styled)
    adapted = {n for n, m in runner.resident["tiny-flux"].pipe.transformer.named_modules() if hasattr(m, "lora_A")}
    assert "transformer_blocks.0.attn.to_q" in adapted and "single_transformer_blocks.1.proj_out" in adapted


@pytest.mark.slow
def test_the_gpu_bench_runs_the_flow_families_on_the_cpu(tmp_path, model_cache):
    """bench/gpu.py --families flux,sd3 --cpu-smoke: the real builders scaled down, the seeds' loop,
    the runner's batch curve, FLOP counts and TAESD previews, on the CPU (the numbers mean nothing)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "bench" / "gpu.py"), "--cpu-smoke", "--families", "flux,sd3",
                             "--batch", "1,2", "--out", str(tmp_path / "gpu.json")], cwd=root, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "FARM_MODEL_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-cpu-smoke.json").read_text())
    assert [(r["family"], r["recipe"], [c["micro_batch"] for c in r["runner"]]) for r in report["results"]] == [
        ("flux", "schnell", [1, 2]), ("sd3", "sd35-turbo", [1, 2])]
    assert all({"unet_tflop", "vae_decode_tflop", "text_encode_tflop"} <= set(r) for r in report["results"])
