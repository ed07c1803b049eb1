"""Small GPUs: model CPU offload and VAE tiling render the same pixels as the plain path (the
hooks run on the CPU too), across adapter switches; the peak device memory is reported."""

import numpy as np
import pytest

from farm.errors import ConfigError
from farm.jobs.spec import Catalog, JobRequest, resolve_job

torch = pytest.importorskip("torch")


def specs(model: str, style: bool, seeds=range(100, 104)):
    # 2 LCM steps, not the recipe's 4: offload hooks and adapter switches act once per call, and 2
    # steps still run the UNet under the hooks more than once
    adapters = (f"{model}-toy:0.8",) if style else ()
    return [resolve_job(JobRequest(prompt="a lighthouse at dusk", seed=s, model=model, adapters=adapters, steps=2),
                        Catalog(), "tiny-sd") for s in seeds]


@pytest.fixture(scope="module")
def plain(model_cache):
    """The plain path's pixels (no offload, no tiling) of (model, style), rendered once per module
    by one runner: what every offloaded or tiled render here is compared with."""
    from engine.runner import Runner

    runner = Runner(device="cpu", model_cache=model_cache)
    rendered: dict = {}

    def render(model: str, style: bool):
        if (model, style) not in rendered:
            rendered[model, style] = runner.render(specs(model, style)).pixels
        return rendered[model, style]

    return render


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_model_offload_renders_the_same_pixels_across_adapter_switches(model_cache, plain, model):
    from engine.runner import Runner

    offloaded = Runner(device="cpu", model_cache=model_cache, offload="model")
    for style in (False, True, False):  # each switch takes the offload hooks off and back on
        a, b = plain(model, style), offloaded.render(specs(model, style))
        for x, y in zip(a, b.pixels):
            assert np.array_equal(x, y)
        assert b.timings["peak_memory_mb"] == 0.0 and b.environment["offload"] == "model"
    assert hasattr(offloaded.resident[model].pipe.unet, "_hf_hook")  # the hooks are really on


def test_vae_tiling_and_slicing_decode_within_a_level_and_stay_batch_invariant(model_cache, plain):
    """Slicing decodes one image at a time, which rounds a little differently from a batched
    decode (so not bit for bit), but an image no longer depends on its batch at all."""
    from engine.runner import Runner

    tiled = Runner(device="cpu", model_cache=model_cache, vae_tiling=True)
    a, b = plain("tiny-sd", False), tiled.render(specs("tiny-sd", False))
    assert tiled.resident["tiny-sd"].pipe.vae.use_tiling
    for x, y in zip(a, b.pixels):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2
    alone = tiled.render(specs("tiny-sd", False, seeds=[103])).pixels[0]
    assert np.array_equal(alone, b.pixels[3])


def test_offload_settings_are_checked(model_cache):
    from engine.runner import Runner

    with pytest.raises(ConfigError, match="^FARM_OFFLOAD: sequential offload needs a CUDA device"):
        Runner(device="cpu", model_cache=model_cache, offload="sequential")
    with pytest.raises(ConfigError, match="^FARM_OFFLOAD: 'disk' is not one of"):
        Runner(device="cpu", model_cache=model_cache, offload="disk")


def test_worker_settings_carry_offload():
    from workers.settings import WorkerSettings

    s = WorkerSettings.from_env({"FARM_OFFLOAD": "model", "FARM_VAE_TILING": "1"})
    assert (s.offload, s.vae_tiling) == ("model", True)
    with pytest.raises(ConfigError, match="^FARM_OFFLOAD: "):
        WorkerSettings.from_env({"FARM_OFFLOAD": "gpu"})
