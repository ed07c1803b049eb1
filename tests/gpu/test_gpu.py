"""The GPU tier: runs unchanged wherever CUDA is present (skipped elsewhere). fp16 kernels pick
different algorithms at different batch sizes, so equality is within a stated tolerance here."""

from dataclasses import replace

import numpy as np
import pytest

from farm.jobs.spec import AdapterUse, direct_spec

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOLERANCE = 4  # of 255: fp16 rounding differences between batch shapes and kernels


def job(seed, model="tiny-sd"):
    return direct_spec(seed=seed, model=model, family="sdxl" if "sdxl" in model else "sd15",
                       adapters=[(f"{model}-lcm-lora", 1.0, "accelerator")])


@pytest.fixture(scope="module")
def runner(model_cache):
    from engine.runner import Runner

    return Runner(device="cuda", model_cache=model_cache)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_fp16_channels_last_and_batch_tolerance(runner, model):
    resident, _ = runner.pipeline(model)
    assert resident.pipe.unet.dtype == torch.float16
    assert resident.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    alone = runner.render([job(7, model)]).pixels[0].astype(int)
    batch = runner.render([job(s, model) for s in range(4, 12)]).pixels[3].astype(int)
    assert np.abs(alone - batch).max() <= TOLERANCE


def test_fused_accelerator_on_cuda_is_close_to_unfused(runner, model_cache):
    from engine.runner import Runner

    unfused = Runner(device="cuda", model_cache=model_cache, fuse=False)
    a = runner.render([job(3)]).pixels[0].astype(int)  # fused by default on CUDA
    b = unfused.render([job(3)]).pixels[0].astype(int)
    assert runner.resident["tiny-sd"].adapters.fused is not None
    assert np.abs(a - b).max() <= TOLERANCE


def test_compiled_unet_on_cuda_does_not_recompile_when_adapters_switch(model_cache):
    from torch._dynamo.utils import counters

    from engine.runner import Runner

    torch._dynamo.reset()
    compiled = Runner(device="cuda", model_cache=model_cache, compile=True)
    eager = Runner(device="cuda", model_cache=model_cache)
    styled = lambda weight: replace(job(3), adapters=job(3).adapters + (  # noqa: E731
        AdapterUse("tiny-sd-toy", weight, "style"),))
    compiled.render([job(3)])
    graphs = counters["stats"]["unique_graphs"]
    for j in (styled(0.8), styled(0.4), job(3)):
        a = compiled.render([j]).pixels[0].astype(int)
        b = eager.render([j]).pixels[0].astype(int)
        assert np.abs(a - b).max() <= TOLERANCE
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_renders_match_and_report_their_peak_memory(runner, model_cache, mode):
    """Offload keeps weights in host RAM; the pixels stay within the fp16 tolerance and the
    worker reports the call's peak device memory (what an 8 GB card cares about)."""
    from engine.runner import Runner

    offloaded = Runner(device="cuda", model_cache=model_cache, offload=mode)
    plain = runner.render([job(s, "tiny-sdxl") for s in range(4)])
    low = offloaded.render([job(s, "tiny-sdxl") for s in range(4)])
    for a, b in zip(plain.pixels, low.pixels):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= TOLERANCE
    assert plain.timings["peak_memory_mb"] > 0 and low.timings["peak_memory_mb"] > 0
    base = job(5, "tiny-sdxl")
    styled = replace(base, adapters=base.adapters + (AdapterUse("tiny-sdxl-toy", 0.8, "style"),))
    a, b = runner.render([styled]).pixels[0], offloaded.render([styled]).pixels[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= TOLERANCE  # an adapter change re-hooks the offload
