"""The flow-matching families on CUDA (skipped elsewhere): FARM_DTYPE=auto loads them in bf16,
images stay within a tolerance between batch shapes, and the fused Hyper-SD FLUX LoRA (fused by
default on CUDA) is close to the unfused one. bf16 keeps 8 mantissa bits, so the tolerance is
wider than fp16's."""

import numpy as np
import pytest

from farm.jobs.spec import Catalog, JobRequest, resolve_job

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOLERANCE = 8  # of 255: bf16 rounding differences between batch shapes and kernels


def job(seed, model="tiny-flux", **fields):
    return resolve_job(JobRequest(prompt="a lighthouse at dusk", seed=seed, model=model, **fields), Catalog(), "x")


@pytest.fixture(scope="module")
def runner(model_cache):
    from engine.runner import Runner

    return Runner(device="cuda", model_cache=model_cache, max_models=3)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-flux-dev", "tiny-sd3"])
def test_auto_is_bf16_and_batches_stay_within_tolerance(runner, model):
    resident, _ = runner.pipeline(model)
    assert resident.pipe.transformer.dtype == torch.bfloat16 and resident.dtype == torch.bfloat16
    alone = runner.render([job(7, model)])
    batch = runner.render([job(s, model) for s in range(4, 12)])
    assert alone.environment["dtype"] == "bfloat16"
    assert np.abs(alone.pixels[0].astype(int) - batch.pixels[3].astype(int)).max() <= TOLERANCE
    assert alone.pixels[0].std() > 1


def test_the_fused_hyper_lora_is_close_to_the_unfused_one(runner, model_cache):
    from engine.runner import Runner

    unfused = Runner(device="cuda", model_cache=model_cache, fuse=False)
    spec = job(3, "tiny-flux-dev", adapters=["tiny-flux-toy:0.8"])
    a = runner.render([spec]).pixels[0].astype(int)  # the accelerator is fused by default on CUDA
    b = unfused.render([spec]).pixels[0].astype(int)
    assert runner.resident["tiny-flux-dev"].adapters.fused == (("tiny-flux-hyper-8step", 0.125),)
    assert np.abs(a - b).max() <= TOLERANCE
