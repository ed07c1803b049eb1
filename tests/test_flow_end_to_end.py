"""FLUX.1-schnell, SD3.5 Large Turbo and FLUX.1-dev + Hyper-SD end to end on their tiny versions:
a real Redis and a real Celery worker process render every flow recipe; a user's own
diffusers-layout FLUX LoRA is registered with the CLI and renders; the PNGs' parameters read back
with a parser written from A1111's; replay, dedupe, a sweep and stats work for these families; and
each kind of bad input ends with one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.a1111 import hash_list, parse

ROOT = Path(__file__).resolve().parents[1]


def farm_cli(*args, env, check=True):
    result = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"farm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def user_flux_lora(model_cache, path: Path) -> Path:
    """A user's FLUX LoRA as diffusers and most trainers save it (``transformer.<module>.lora_A``),
    on attention and feed-forward layers of tiny-flux, made with peft."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from engine.sources import resolve

    transformer = FluxTransformer2DModel.from_pretrained(resolve("builtin:tiny-flux", model_cache).path,
                                                         subfolder="transformer")
    torch.manual_seed(11)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                       target_modules=["to_q", "to_v", "ff.net.2", "proj_mlp"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(str(path.parent), transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name=path.name)
    return path


@pytest.mark.workers
@pytest.mark.redis
def test_every_flow_recipe_renders_through_a_real_worker(farm_env, tmp_path, model_cache):
    pytest.importorskip("torch")
    import farm
    from engine.imaging import read_png_text

    lora = user_flux_lora(model_cache, tmp_path / "files" / "my_flux_style.safetensors")
    added = json.loads(farm_cli("adapters", "add", "my-flux-style", "--source", str(lora), "--kind", "style",
                                "--family", "tiny-flux", "--json", env=farm_env).stdout)
    assert added["layout"] == "diffusers" and len(added["addnet_sha256"]) == 64

    with farm.Farm.local(home=farm_env["FARM_HOME"], workers=1, env=farm_env) as f:
        with pytest.warns(farm.FarmWarning, match="negative prompt ignored: flux models do not run"):
            schnell = f.submit("a lighthouse at dusk", model="tiny-flux", variants=3, seed=20, negative="fog")
        sd3 = f.submit("a red fox in snow", model="tiny-sd3", variants=2, seed=30, size="96x64")
        hyper = f.submit("a toy robot", model="tiny-flux-dev", seed=40,
                         adapters=["tiny-flux-toy:0.8", "my-flux-style:0.6"])
        sweep = f.submit("a harbour at night", model="tiny-flux", recipe="schnell", steps="1-4", seed=50)
        batches = (schnell, sd3, hyper, sweep)
        for batch in batches:
            assert f.wait(batch, timeout=300)["succeeded"] == f.status(batch).batch.job_count

        records = {}
        for batch in batches:
            for job, path in zip(f.jobs(batch), f.download(batch, tmp_path / batch)):
                text = read_png_text(path.read_bytes())
                records[job.id] = (job, json.loads(text["farm"]), parse(text["parameters"]), text["parameters"])
        print("\n\n".join(params for *_, params in records.values()))  # the report quotes them

        by_batch = {batch: [records[j.id] for j in f.jobs(batch)] for batch in batches}
        job, record, read, _ = by_batch[schnell][1]
        assert (record["recipe"], record["family"], record["scheduler"], record["steps"], record["guidance"]) == (
            "schnell", "flux", "FlowMatchEulerDiscreteScheduler", 4, 0.0)
        assert (read["Sampler"], read["Steps"], read["CFG scale"], read["Seed"], read["Size"], read["Model"]) == (
            "Euler", "4", "0", "21", "64x64", "tiny-flux")
        assert read["Negative prompt"] == "fog" and read["Recipe"] == "schnell"
        assert record["environment"]["dtype"] == "float32"

        job, record, read, _ = by_batch[sd3][0]
        assert (record["recipe"], record["family"], read["Size"], read["Steps"], read["CFG scale"]) == (
            "sd35-turbo", "sd3", "96x64", "4", "0")

        job, record, read, _ = by_batch[hyper][0]
        assert read["Prompt"] == ("a toy robot <lora:tiny-flux-hyper-8step:0.125> <lora:tiny-flux-toy:0.8> "
                                  "<lora:my-flux-style:0.6>")
        assert (read["Steps"], read["CFG scale"], read["Model"], read["Recipe"]) == ("8", "3.5", "tiny-flux-dev",
                                                                                     "flux-hyper")
        assert read["Lora weights"] == "tiny-flux-hyper-8step: 0.125, tiny-flux-toy: 0.8, my-flux-style: 0.6"
        assert hash_list(read["Lora hashes"]) == {"my-flux-style": added["addnet_sha256"][:12]}
        assert [a["name"] for a in record["adapters"]] == ["tiny-flux-hyper-8step", "tiny-flux-toy", "my-flux-style"]

        assert sorted(r[0].spec.steps for r in by_batch[sweep]) == [1, 2, 3, 4]

        # replay re-renders from the record: the same pixels on the CPU, for each family
        for batch in (schnell, sd3, hyper):
            replayed = f.replay(f.jobs(batch)[0].id)
            assert replayed["max_difference"] == 0, replayed

        # dedupe: the same submission again reuses every stored image; extending the sweep renders the new cells
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", farm.FarmWarning)
            again = f.submit_plan(f.plan("a lighthouse at dusk", model="tiny-flux", variants=3, seed=20,
                                         negative="fog"))
        assert (again.jobs, again.to_render, again.reused) == (3, 0, 3)
        assert f.dry_run("a toy robot", model="tiny-flux-dev", seed=40, steps="8-10",
                         adapters=["tiny-flux-toy:0.8", "my-flux-style:0.6"])["to_render"] == 2

    stats = json.loads(farm_cli("stats", "--by", "recipe", "--json", env=farm_env).stdout)
    images = {g["group"]: g["images"] for g in stats["groups"]}
    assert images == {"schnell": 7, "sd35-turbo": 2, "flux-hyper": 1}


BAD = [
    (["a lighthouse", "--model", "tiny-flux", "--size", "72x64"],
     "error: width: 72 is not a multiple of 16 (flux models take sides in steps of 16, e.g. 64)"),
    (["a lighthouse", "--model", "tiny-sd3", "--size", "64x40"], "error: height: 40 is outside 64..2048"),
    (["a lighthouse", "--model", "tiny-sd3", "--size", "64x104"], "error: height: 104 is not a multiple of 16"),
    (["a lighthouse", "--model", "tiny-flux", "--guidance", "3.5"],
     "error: guidance: 3.5 is not 0: the schnell recipe runs without guidance"),
    (["a lighthouse", "--model", "tiny-flux", "--adapter", "tiny-sd-toy:0.8"],
     "error: adapter: tiny-sd-toy is for tiny-sd models, not tiny-flux (tiny-flux)"),
    (["a lighthouse", "--model", "tiny-flux", "--recipe", "flux-hyper"],
     "error: recipe: flux-hyper needs a base model; tiny-flux is a turbo model"),
    (["a lighthouse", "--model", "tiny-flux-dev", "--steps", "12"],
     "error: steps: 12 steps needs a 12-step flux-hyper LoRA for tiny-flux models (registered: 8)"),
]


@pytest.mark.parametrize("args, line", BAD, ids=[line.split(":")[1].strip() + "-" + a[2] for a, line in BAD])
def test_bad_input_is_one_line_and_exit_2_and_starts_nothing(farm_env, args, line):
    result = farm_cli("submit", *args, env=farm_env, check=False)
    assert result.returncode == 2 and result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert not (Path(farm_env["FARM_HOME"]) / "ledger.db").exists()


def test_a_negative_prompt_for_flux_is_a_warning_not_an_error(farm_env):
    result = farm_cli("submit", "a lighthouse", "--model", "tiny-flux", "--negative", "blurry", "--dry-run",
                      env=farm_env, check=False)
    assert result.returncode == 0, result.stderr
    assert "warning: negative prompt ignored: flux models do not run classifier-free guidance" in result.stderr
