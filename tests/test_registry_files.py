"""`farm adapters add` / `farm embeddings add` with users' own files: the file is read at add (no
torch), its layout and sha256 recorded and listed; every bad file ends with one line naming it,
exit 2, and the registry unchanged."""

import json
import struct

import pytest
from click.testing import CliRunner

from farm.cli import cli
from tests.usersfiles import header_file, kohya_header


@pytest.fixture
def farm_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_MODEL_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args))

    return invoke


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    return {
        "kohya": header_file(d / "toy_kohya.safetensors", kohya_header("tiny-sd"), metadata={"ss_network_dim": "4"}),
        "kohya-xl": header_file(d / "toy_xl.safetensors", kohya_header("tiny-sdxl", original=True)),
        "peft": header_file(d / "toy_peft.safetensors", {
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64),
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": (64, 4)}),
        "nowhere": header_file(d / "nowhere.safetensors", {"lora_unet_nothing_here.lora_down.weight": (4, 8),
                                                           "lora_unet_nothing_here.lora_up.weight": (8, 4)}),
        "emb": header_file(d / "easyneg.safetensors", {"emb_params": (2, 32)}),
        "emb-xl": header_file(d / "easyneg_xl.safetensors", {"clip_l": (2, 32), "clip_g": (2, 64)}),
        "emb-wide": header_file(d / "wide.safetensors", {"emb_params": (2, 768)}),
        "ckpt": _write(d / "model.ckpt", b"PK\x03\x04 a zip"),
        "pickle": _write(d / "pickled.safetensors", b"\x80\x02}q\x00."),
        "zip": _write(d / "zipped.safetensors", b"PK\x03\x04 a zip"),
        "truncated": _write(d / "cut.safetensors", struct.pack("<Q", 500) + b'{"a": '),
    }


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def registry(farm_cli) -> tuple:
    return tuple(json.loads(farm_cli(what, "list", "--json").stdout) for what in ("adapters", "embeddings", "models"))


def test_kohya_and_diffusers_loras_are_registered_with_their_layout_and_sha256(farm_cli, files):
    added = farm_cli("adapters", "add", "toy-k", "--source", str(files["kohya"]), "--kind", "style",
                     "--family", "tiny-sd", "--json")
    assert added.exit_code == 0, added.stderr
    row = json.loads(added.stdout)
    from farm.models.loras import inspect_lora

    lora = inspect_lora(files["kohya"], "tiny-sd")
    assert (row["layout"], row["sha256"], row["addnet_sha256"]) == ("kohya", lora.sha256, lora.addnet_sha256)
    text = farm_cli("adapters", "add", "toy-p", "--source", str(files["peft"]), "--kind", "style", "--family", "tiny-sd")
    assert text.exit_code == 0 and "diffusers layout" in text.stdout and "sha256 " in text.stdout
    xl = farm_cli("adapters", "add", "toy-xl", "--source", str(files["kohya-xl"]), "--kind", "style",
                  "--family", "tiny-sdxl")
    assert xl.exit_code == 0, xl.stderr

    listed = {a["name"]: a for a in json.loads(farm_cli("adapters", "list", "--json").stdout)}
    assert listed["toy-k"]["sha256"] == lora.sha256 and listed["toy-xl"]["layout"] == "kohya"
    assert listed["tiny-sd-toy"]["sha256"] is None  # built in: no file to hash
    lines = farm_cli("adapters", "list").stdout.splitlines()
    assert any(line.startswith("toy-k ") and line.endswith(lora.sha256) and " kohya " in line for line in lines)
    models = farm_cli("models", "list")
    assert models.exit_code == 0 and all(line.endswith(" -") for line in models.stdout.splitlines())
    assert all("sha256" in m for m in json.loads(farm_cli("models", "list", "--json").stdout))


def test_embeddings_add_list_and_remove(farm_cli, files):
    added = farm_cli("embeddings", "add", "easyneg", "--source", str(files["emb"]), "--family", "tiny-sd", "--json")
    assert added.exit_code == 0, added.stderr
    row = json.loads(added.stdout)
    assert (row["token"], row["vectors"], row["arch"], len(row["sha256"])) == ("easyneg", 2, "tiny-sd", 64)
    xl = farm_cli("embeddings", "add", "easyneg-xl", "--source", str(files["emb-xl"]), "--family", "tiny-sdxl",
                  "--token", "EasyNeg")
    assert xl.exit_code == 0 and "token EasyNeg" in xl.stdout  # one token per arch: this one is for tiny-sdxl
    listed = farm_cli("embeddings", "list").stdout.splitlines()
    assert [line.split()[:4] for line in listed] == [["easyneg", "easyneg", "tiny-sd", "2"],
                                                    ["easyneg-xl", "EasyNeg", "tiny-sdxl", "2"]]
    assert farm_cli("embeddings", "remove", "easyneg").exit_code == 0
    assert [e["name"] for e in json.loads(farm_cli("embeddings", "list", "--json").stdout)] == ["easyneg-xl"]
    missing = farm_cli("embeddings", "remove", "easyneg")
    assert missing.exit_code == 2 and "no registered embedding 'easyneg'" in missing.stderr


BAD = [
    # (command, the file's key, words of the one line)
    ("adapter", "ckpt", "only .safetensors weight files are loaded (no pickles)"),
    ("adapter", "pickle", "a Python pickle"),
    ("adapter", "zip", "a zip archive"),
    ("adapter", "truncated", "truncated, or another format"),
    ("adapter", "kohya-xl", "layers do not fit tiny-sd models"),
    ("adapter", "nowhere", "none of its 1 layers fit tiny-sd models"),
    ("adapter", "emb", "not a LoRA"),
    ("embedding", "emb-wide", "vectors are 768 wide; the tiny-sd text encoder it is for takes 32"),
    ("embedding", "emb-xl", "an SDXL embedding (clip_l, clip_g)"),
    ("embedding", "kohya", "holds"),
    ("embedding", "truncated", "truncated"),
]


@pytest.mark.parametrize("what,key,words", BAD, ids=[f"{w}-{k}" for w, k, _ in BAD])
def test_a_bad_file_is_one_line_naming_it_exit_2_and_nothing_registered(farm_cli, files, what, key, words):
    before = registry(farm_cli)
    if what == "adapter":
        result = farm_cli("adapters", "add", "x", "--source", str(files[key]), "--kind", "style", "--family", "tiny-sd")
    else:
        result = farm_cli("embeddings", "add", "x", "--source", str(files[key]), "--family", "tiny-sd")
    assert result.exit_code == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and str(files[key].name) in line and words in line, line
    assert "Traceback" not in result.output
    assert registry(farm_cli) == before


def test_names_and_files_registered_once(farm_cli, files):
    ok = farm_cli("adapters", "add", "toy", "--source", str(files["kohya"]), "--kind", "style", "--family", "tiny-sd")
    assert ok.exit_code == 0
    assert farm_cli("embeddings", "add", "easyneg", "--source", str(files["emb"]), "--family", "tiny-sd").exit_code == 0
    before = registry(farm_cli)
    cases = [
        (("adapters", "add", "toy", "--source", str(files["peft"]), "--kind", "style", "--family", "tiny-sd"),
         "adapter toy is already registered"),
        (("adapters", "add", "toy-again", "--source", str(files["kohya"]), "--kind", "style", "--family", "tiny-sd"),
         f"{files['kohya']} is already registered as toy (same sha256)"),
        (("embeddings", "add", "easyneg", "--source", str(files["emb"]), "--family", "tiny-sd"),
         "embedding easyneg is already registered"),
        (("embeddings", "add", "easyneg2", "--source", str(files["emb"]), "--family", "tiny-sd"),
         f"{files['emb']} is already registered as easyneg (same sha256)"),
        (("embeddings", "add", "other", "--source", str(files["emb-wide"]), "--family", "sd15", "--token", "easyneg"),
         None),  # the same token for another arch is fine
        (("embeddings", "add", "clash", "--source", str(files["emb"]).replace("easyneg", "x"), "--family", "tiny-sd"),
         "no such file"),
        (("adapters", "add", "tiny-sd-toy", "--source", str(files["peft"]), "--kind", "style", "--family", "tiny-sd"),
         "tiny-sd-toy is a built-in adapter"),
        (("embeddings", "add", "bad", "--source", str(files["emb"]), "--family", "tiny-sd", "--token", "two words"),
         "not a valid token"),
    ]
    for args, words in cases:
        result = farm_cli(*args)
        if words is None:
            assert result.exit_code == 0, result.stderr
            continue
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and words in result.stderr, (
            args, result.stderr)
    after = registry(farm_cli)
    assert after[0] == before[0] and [e["name"] for e in after[1]] == ["easyneg", "other"]


def test_a_token_another_embedding_of_the_arch_has_is_refused(farm_cli, files, tmp_path):
    assert farm_cli("embeddings", "add", "easyneg", "--source", str(files["emb"]), "--family", "tiny-sd").exit_code == 0
    other = header_file(tmp_path / "other.safetensors", {"emb_params": (3, 32)})
    result = farm_cli("embeddings", "add", "neg2", "--source", str(other), "--family", "tiny-sd", "--token", "EasyNeg")
    assert result.exit_code == 2 and "EasyNeg is already the token of embedding easyneg" in result.stderr
