"""The GPU tier: runs unchanged wherever CUDA is present (skipped elsewhere). fp16 kernels pick
different algorithms at different batch sizes, so equality is within a stated tolerance here."""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOLERANCE = 4  # of 255: fp16 rounding differences between batch shapes and kernels


def job(seed, model="tiny-sd"):
    return SimpleNamespace(prompt="a lighthouse at dusk", negative_prompt="", seed=seed, steps=4, guidance=1.0,
                           width=64, height=64, model=model, scheduler="LCMScheduler", scheduler_config={},
                           adapters=[{"name": f"{model}-lcm-lora", "weight": 1.0, "role": "accelerator"}])


@pytest.fixture(scope="module")
def runner(model_cache):
    from workers.runner import Runner

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
    from workers.runner import Runner

    unfused = Runner(device="cuda", model_cache=model_cache, fuse=False)
    a = runner.render([job(3)]).pixels[0].astype(int)  # fused by default on CUDA
    b = unfused.render([job(3)]).pixels[0].astype(int)
    assert runner.resident["tiny-sd"].adapters.fused is not None
    assert np.abs(a - b).max() <= TOLERANCE
