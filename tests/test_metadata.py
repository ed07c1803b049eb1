"""The A1111 parameters text that other tools read."""

from farm.results.metadata import a1111_parameters, parse_seed, sampler_name

JOB = {"id": 7, "prompt": "a lighthouse\nat dusk", "negative_prompt": "blurry", "steps": 4,
       "scheduler": "LCMScheduler", "scheduler_config": {}, "guidance": 1.0, "seed": 100,
       "width": 64, "height": 64, "model": "tiny-sd", "recipe": "lcm-lora",
       "adapters": [{"name": "tiny-sd-lcm-lora", "weight": 1.0}, {"name": "tiny-sd-toy", "weight": 0.8}]}


def test_parameters_text():
    text = a1111_parameters(JOB)
    lines = text.splitlines()
    assert lines[0] == "a lighthouse at dusk <lora:tiny-sd-lcm-lora:1> <lora:tiny-sd-toy:0.8>"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 4, Sampler: LCM, CFG scale: 1, Seed: 100, Size: 64x64, Model: tiny-sd")
    assert 'Lora weights: "tiny-sd-lcm-lora: 1, tiny-sd-toy: 0.8"' in lines[2]
    assert parse_seed(text) == 100


def test_sampler_names():
    assert sampler_name("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}) == "DPM++ 2S Karras"
    assert sampler_name(None, None) == "Euler"
