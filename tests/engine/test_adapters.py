"""The adapter cache: stacks and weights, bounds by count and bytes, memory that really returns,
re-attach from host RAM, and a fused accelerator that unfuses bit for bit."""

import gc
import weakref

import numpy as np
import pytest

from farm.jobs.spec import direct_spec

torch = pytest.importorskip("torch")


def make_runner(model_cache, **options):
    from engine.runner import Runner

    return Runner(device="cpu", model_cache=model_cache, **options)


# 2 steps: every property here is about the weights each step runs with, which 2 steps show as well as
# 4 (and the default scheduler's 2 steps as well as its 10); the denoising loop still runs more than once
def job(*styles, model="tiny-sd", accelerator=("tiny-sd-lcm-lora", 1.0), seed=5, scheduler="LCMScheduler",
        guidance=1.0, steps=2):
    adapters = [(accelerator[0], accelerator[1], "accelerator")] if accelerator else []
    adapters += [(n, w, "style") for n, w in styles]
    return direct_spec(prompt="a toy robot", seed=seed, steps=steps, guidance=guidance, model=model,
                       family="sdxl" if "sdxl" in model else "sd15", scheduler=scheduler, adapters=adapters)


def pixels(runner, j):
    return runner.render([j]).pixels[0]


def lora_bytes(pipe):
    return sum(p.numel() * p.element_size() for n, p in pipe.unet.named_parameters() if "lora_" in n)


@pytest.fixture(scope="module")
def runner(model_cache):
    return make_runner(model_cache)


@pytest.fixture(scope="module")
def reference(runner):
    """The plain (unfused, uncompiled) module runner's pixels of a job, rendered once per module:
    what the fused and compiled runners are compared with. Re-rendering on the same runner is what
    test_style_stack_and_weights_matter checks, so it is not repeated for every comparison."""
    rendered: dict[str, np.ndarray] = {}

    def render(j):
        key = repr(j)
        if key not in rendered:
            rendered[key] = pixels(runner, j)
        return rendered[key]

    return render


def test_style_stack_and_weights_matter(runner, reference):
    plain = reference(job())  # the fused and compiled tests below compare with these two as well
    toy = reference(job(("tiny-sd-toy", 0.8)))
    toy_ink = pixels(runner, job(("tiny-sd-toy", 0.8), ("tiny-sd-ink", 0.5)))
    assert not np.array_equal(plain, toy) and not np.array_equal(toy, toy_ink)
    assert not np.array_equal(toy, pixels(runner, job(("tiny-sd-toy", 0.4))))
    assert np.array_equal(plain, pixels(runner, job(("tiny-sd-toy", 0.0))))  # weight 0 == no adapter
    assert np.array_equal(toy, pixels(runner, job(("tiny-sd-toy", 0.8))))  # and back again
    assert np.array_equal(toy_ink, pixels(runner, job(("tiny-sd-toy", 0.8), ("tiny-sd-ink", 0.5))))


def test_lru_eviction_by_count_frees_the_memory(model_cache):
    runner = make_runner(model_cache, max_adapters=2)
    resident, _ = runner.pipeline("tiny-sd")
    baseline = lora_bytes(resident.pipe)
    pixels(runner, job(("tiny-sd-toy", 0.8)))  # lcm + toy
    adapters = resident.adapters
    toy_bytes = adapters.loaded["tiny-sd-toy"]
    probe = weakref.ref(next(p for n, p in resident.pipe.unet.named_parameters() if ".tiny-sd-toy." in n))
    pixels(runner, job(("tiny-sd-ink", 0.8)))  # lcm + ink: toy is the least recently used
    assert list(adapters.loaded) == ["tiny-sd-lcm-lora", "tiny-sd-ink"] and adapters.stats["evictions"] == 1
    gc.collect()
    assert probe() is None, "the evicted adapter's tensors are still referenced"
    assert not any(".tiny-sd-toy." in n for n, _ in resident.pipe.unet.named_parameters())
    assert lora_bytes(resident.pipe) == baseline + sum(adapters.loaded.values())
    assert toy_bytes == adapters.loaded["tiny-sd-ink"]  # same shapes, same size


def test_eviction_by_bytes(model_cache, runner):
    adapters = runner.pipeline("tiny-sd")[0].adapters  # the size of one style LoRA, without a render
    adapters.activate([("tiny-sd-lcm-lora", 1.0), ("tiny-sd-toy", 0.8)], "tiny-sd-lcm-lora")
    one = adapters.loaded["tiny-sd-toy"]
    bounded = make_runner(model_cache, max_adapter_bytes=int(one * 2.5))
    pixels(bounded, job(("tiny-sd-toy", 0.8), ("tiny-sd-ink", 0.3)))
    pixels(bounded, job())
    pixels(bounded, job(("tiny-sd-ink", 0.3)))  # 3 adapters would not fit: toy goes
    assert list(bounded.resident["tiny-sd"].adapters.loaded) == ["tiny-sd-lcm-lora", "tiny-sd-ink"]


def test_an_evicted_adapter_comes_back_from_host_ram_with_the_same_pixels(model_cache):
    runner = make_runner(model_cache, max_adapters=2)
    first = pixels(runner, job(("tiny-sd-toy", 0.8)))
    pixels(runner, job(("tiny-sd-ink", 0.8)))
    stats = runner.resident["tiny-sd"].adapters.stats
    disk = stats["loads_disk"]
    again = pixels(runner, job(("tiny-sd-toy", 0.8)))
    assert stats["loads_disk"] == disk and stats["loads_host"] == 1
    assert np.array_equal(first, again)


def test_a_fused_accelerator_is_close_and_unfuses_exactly(model_cache, reference):
    fused = make_runner(model_cache, fuse=True)
    unfused_lcm = reference(job(("tiny-sd-toy", 0.8)))
    fused_lcm = pixels(fused, job(("tiny-sd-toy", 0.8)))
    adapters = fused.resident["tiny-sd"].adapters
    assert adapters.fused == (("tiny-sd-lcm-lora", 1.0),) and list(adapters.loaded) == ["tiny-sd-toy"]
    # W + BA folded once rounds differently from x@W + x@A@B per step: close, not identical
    assert np.abs(fused_lcm.astype(int) - unfused_lcm).max() <= 3
    # a different accelerator weight (lcm-blend's 0.3) unfuses and refuses; coming back is exact
    pixels(fused, job(accelerator=("tiny-sd-lcm-lora", 0.3), scheduler="DPMSolverSinglestepScheduler",
                      guidance=2.5))
    assert adapters.fused == (("tiny-sd-lcm-lora", 0.3),) and adapters.stats["unfuses"] == 1
    assert np.array_equal(fused_lcm, pixels(fused, job(("tiny-sd-toy", 0.8))))
    # no accelerator at all: the original weights are back, bit for bit
    no_accel = job(accelerator=None, scheduler=None, guidance=5.0)
    assert adapters.fused is not None
    assert np.array_equal(pixels(fused, no_accel), reference(no_accel))
    assert adapters.fused is None


def test_a_fused_stack_matches_the_unfused_stack_and_restores_exactly(model_cache, reference):
    """What a compiled UNet uses: every adapter of the stack folded into the weights, so switching
    stacks changes parameters in place and never the module structure."""
    fused = make_runner(model_cache)
    adapters = fused.pipeline("tiny-sd")[0].adapters
    adapters.fuse_stack = True
    stacks = [(("tiny-sd-toy", 0.8),), (("tiny-sd-toy", 0.5), ("tiny-sd-ink", 0.3)), ()]
    first = []
    for styles in stacks:
        got, want = pixels(fused, job(*styles)), reference(job(*styles))
        assert adapters.fused == (("tiny-sd-lcm-lora", 1.0), *styles) and adapters.loaded == {}
        assert np.abs(got.astype(int) - want).max() <= 3  # rounding of W + sum(w BA), not another stack
        first.append(got)
    for styles, earlier in zip(stacks, first):  # back and forth: the originals come back bit for bit
        assert np.array_equal(pixels(fused, job(*styles)), earlier)
    no_adapters = job(accelerator=None, scheduler=None, guidance=5.0)
    assert np.array_equal(pixels(fused, no_adapters), reference(no_adapters)) and adapters.fused is None


@pytest.mark.skipif(not (__import__("shutil").which("g++") or __import__("shutil").which("cc")),
                    reason="inductor on a CPU needs a C++ compiler")
def test_a_compiled_unet_is_not_compiled_again_when_adapters_switch(model_cache, reference):
    """FARM_COMPILE: the first call at a shape compiles; style switches and weight changes after
    it compile nothing (bench/compile.py measures what they cost otherwise)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled = make_runner(model_cache, compile=True)
    stacks = [(), (("tiny-sd-toy", 0.8),), (("tiny-sd-toy", 0.5),), (("tiny-sd-ink", 0.8), ("tiny-sd-toy", 0.2)), ()]
    pixels(compiled, job(*stacks[0]))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for styles in stacks[1:]:
        got = pixels(compiled, job(*styles))
        assert np.abs(got.astype(int) - reference(job(*styles))).max() <= 3
    assert counters["stats"]["unique_graphs"] == graphs
