"""Users' own files end to end with real processes: a single-file checkpoint, a Kohya LoRA and an
A1111 embedding registered with the CLI, rendered by a real worker, and the PNG's parameters carrying the hashes from the
registry, read back by a parser written from A1111's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.a1111 import hash_list, parse

ROOT = Path(__file__).resolve().parents[1]


def farm(*args, env):
    result = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"farm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.workers
@pytest.mark.redis
def test_a_single_file_model_a_kohya_lora_and_an_embedding_render_and_the_png_names_their_hashes(
        farm_env, tmp_path, model_cache):
    pytest.importorskip("torch")
    from engine.imaging import read_png_text
    from engine.sources import resolve
    from farm.models.layers import encoder_widths
    from tests.ldm_convert import save_single_file
    from tests.usersfiles import embedding_file, peft_lora, to_kohya

    model_dir = Path(resolve("builtin:tiny-sd", model_cache).path)
    (tmp_path / "files").mkdir()
    checkpoint = save_single_file(model_dir, tmp_path / "files" / "mySD_v1.safetensors")
    model = json.loads(farm("models", "add", "my-sd", "--source", str(checkpoint), "--family", "sd15",
                            "--arch", "tiny-sd", "--native-size", "64", "--json", env=farm_env).stdout)
    assert len(model["sha256"]) == 64
    again = subprocess.run([sys.executable, "-m", "farm.cli", "models", "add", "other-sd", "--source", str(checkpoint),
                            "--family", "sd15", "--arch", "tiny-sd"], env=farm_env, cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 2 and again.stderr == (
        f"error: source: {checkpoint} is already registered as my-sd (same sha256)\n")
    listed = {m["name"]: m for m in json.loads(farm("models", "list", "--json", env=farm_env).stdout)}
    assert listed["my-sd"]["sha256"] == model["sha256"] and "other-sd" not in listed

    peft = peft_lora(model_dir, tmp_path / "files" / "peft.safetensors", xl=False, seed=5)
    kohya = to_kohya(peft, tmp_path / "files" / "toy_kohya.safetensors", xl=False, alpha=2.0)
    easyneg = embedding_file(tmp_path / "files" / "EasyNeg.safetensors", list(encoder_widths("tiny-sd").values()))

    added = json.loads(farm("adapters", "add", "toy-kohya", "--source", str(kohya), "--kind", "style",
                            "--family", "tiny-sd", "--json", env=farm_env).stdout)
    assert added["layout"] == "kohya"
    embedding = json.loads(farm("embeddings", "add", "easyneg", "--source", str(easyneg), "--family", "tiny-sd",
                                "--token", "EasyNeg", "--json", env=farm_env).stdout)

    report = json.loads(farm("run", "a toy robot on a desk, EasyNeg", "--model", "my-sd", "--adapter",
                             "toy-kohya:0.8", "--negative", "blurry", "--guidance", "1.5", "--seed", "7",
                             "--out", str(tmp_path / "out"), "--json", env=farm_env).stdout)
    assert report["succeeded"] == 1
    text = read_png_text(Path(report["outputs"][0]).read_bytes())
    print(text["parameters"])  # the closing note quotes it
    read = parse(text["parameters"])
    assert read["Prompt"].startswith("a toy robot on a desk, EasyNeg <lora:tiny-sd-lcm-lora:1> <lora:toy-kohya:0.8>")
    assert (read["Negative prompt"], read["Seed"], read["Model"]) == ("blurry", "7", "my-sd")
    assert read["Model hash"] == model["sha256"][:10]  # A1111's: the checkpoint file's sha256
    assert hash_list(read["Lora hashes"]) == {"toy-kohya": added["addnet_sha256"][:12]}
    assert hash_list(read["TI hashes"]) == {"EasyNeg": embedding["sha256"][:12]}
    record = json.loads(text["farm"])
    assert record["embeddings"] == ["easyneg"]
    assert record["hashes"] == {"model": model["sha256"], "loras": {"toy-kohya": added["addnet_sha256"]},
                                "embeddings": {"EasyNeg": embedding["sha256"]}}
