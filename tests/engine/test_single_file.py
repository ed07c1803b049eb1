"""Single-file checkpoints (the original LDM key layout of A1111 and Civitai), offline.

The built-in tiny models are converted to that layout (tests/ldm_convert.py), registered through
`farm models add`, loaded by the workers' code with the arch's local config, and rendered: every
weight and every pixel equals the diffusers directory's. Bad files are refused at `add`, and the
shipped configs of the real families are checked against diffusers' own key mapping (on the meta
device: no real-size weights are made).
"""

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.jobs.spec import direct_spec
from tests.ldm_convert import clip_to_ldm, open_clip_to_ldm, save_single_file, unet_to_ldm, vae_to_ldm

torch = pytest.importorskip("torch")

FAMILY = {"tiny-sd": "sd15", "tiny-sdxl": "sdxl"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def single_files(model_cache, tmp_path_factory) -> dict[str, Path]:
    from engine.sources import resolve

    out = tmp_path_factory.mktemp("single-files")
    return {arch: save_single_file(resolve(f"builtin:{arch}", model_cache).path, out / f"{arch}.safetensors")
            for arch in FAMILY}


@pytest.fixture
def farm(tmp_path, monkeypatch, model_cache):
    """`farm ARGS...` through the real CLI, in a fresh farm home."""
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_MODEL_CACHE", str(model_cache))
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args))


def models(farm) -> list[dict]:
    listed = farm("models", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    return json.loads(listed.stdout)


def state_dicts(pipe) -> dict:
    return {name: module.state_dict() for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_a_registered_single_file_has_the_directory_models_weights_and_pixels(arch, single_files, farm, model_cache):
    from engine.runner import Runner
    from farm.config import load_config
    from farm.ledger import Ledger

    added = farm("models", "add", "mine", "--source", str(single_files[arch]), "--family", FAMILY[arch],
                 "--arch", arch, "--native-size", "64", "--json")
    assert added.exit_code == 0, added.stderr
    assert json.loads(added.stdout)["layout"] == "single-file"
    assert {m["name"]: m["layout"] for m in models(farm)}["mine"] == "single-file"

    ledger = Ledger(load_config().database_url)
    runner = Runner(device="cpu", model_cache=model_cache, catalog=ledger.catalog)
    single, directory = runner.pipeline("mine")[0].pipe, runner.pipeline(arch)[0].pipe
    ours, theirs = state_dicts(single), state_dicts(directory)
    expected = {"unet", "vae", "text_encoder"} | ({"text_encoder_2"} if FAMILY[arch] == "sdxl" else set())
    assert set(ours) == set(theirs) == expected
    for component, tensors in theirs.items():
        assert list(ours[component]) == list(tensors), component
        for name, tensor in tensors.items():
            mine = ours[component][name]
            assert mine.device.type == "cpu" and torch.equal(mine, tensor), f"{component}.{name}"
    if "text_encoder_2" in ours:  # the gotcha with equal encoder widths: te2 got te1's weights, this stayed meta
        projection = "text_projection.weight"
        assert torch.equal(ours["text_encoder_2"][projection], theirs["text_encoder_2"][projection])

    def jobs(model):  # the LCM-LoRA of the arch plugs into the single file as into the directory
        return [direct_spec(model=model, family=FAMILY[arch], seed=seed, adapters=[(f"{arch}-lcm-lora", 1.0, "accelerator")])
                for seed in (1, 2)]

    rendered, reference = runner.render(jobs("mine")).pixels, runner.render(jobs(arch)).pixels
    assert all(np.array_equal(a, b) for a, b in zip(rendered, reference))
    assert rendered[0].std() > 5 and not np.array_equal(rendered[0], rendered[1])
    ledger.close()


def one_line_naming(result, path) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_bad_files_are_refused_at_add_with_one_line_naming_them(single_files, farm, tmp_path):
    before = models(farm)
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(pickle.dumps({"state_dict": {}}))
    disguised = tmp_path / "pickle.safetensors"
    disguised.write_bytes(pickle.dumps({"state_dict": {}}))
    zipped = tmp_path / "zipped.safetensors"  # torch.save's format
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
    whole = single_files["tiny-sd"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(whole[: len(whole) // 2])
    lora = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file

    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    cases = [
        (pickled, "sd15", "tiny-sd", "no pickles"),
        (disguised, "sd15", "tiny-sd", "a Python pickle"),
        (zipped, "sd15", "tiny-sd", "a zip archive"),
        (truncated, "sd15", "tiny-sd", "truncated"),
        (lora, "sd15", "tiny-sd", "a LoRA, not a model"),
        (single_files["tiny-sdxl"], "sd15", "tiny-sd", "a tiny-sdxl (sdxl family) checkpoint, not sd15 ("),
        (single_files["tiny-sd"], "sdxl", "tiny-sdxl", "a tiny-sd (sd15 family) checkpoint, not sdxl ("),
        (single_files["tiny-sd"], "sd15", None, "a tiny-sd checkpoint, not sd15 ("),
        (single_files["tiny-sd"], "sd15", None, "); register it with --arch tiny-sd"),
    ]
    for path, family, arch, words in cases:
        flags = ["--family", family] + (["--arch", arch] if arch else [])
        refused = farm("models", "add", "bad", "--source", str(path), *flags)
        line = one_line_naming(refused, path)
        assert words in line, line
    assert models(farm) == before


def test_an_s3_single_file_is_looked_into_at_add_and_renders_after_a_worker_fetches_it(
        single_files, farm, model_cache, s3_server, s3_bucket, tmp_path, monkeypatch):
    from engine.runner import Runner
    from farm.config import load_config
    from farm.ledger import Ledger

    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", s3_server.endpoint)
    client = s3_server.client()
    for arch, path in single_files.items():
        client.put_object(Bucket=s3_bucket, Key=f"models/{arch}.safetensors", Body=path.read_bytes())
    wrong = f"s3://{s3_bucket}/models/tiny-sdxl.safetensors"
    one_line_naming(farm("models", "add", "wrong", "--source", wrong, "--family", "sd15", "--arch", "tiny-sd"), wrong)
    assert "wrong" not in {m["name"] for m in models(farm)}
    source = f"s3://{s3_bucket}/models/tiny-sd.safetensors"
    added = farm("models", "add", "from-s3", "--source", source, "--family", "sd15", "--arch", "tiny-sd", "--json")
    assert added.exit_code == 0, added.stderr
    assert json.loads(added.stdout)["layout"] == "single-file" and len(json.loads(added.stdout)["sha256"]) == 64

    ledger = Ledger(load_config().database_url)
    worker = Runner(device="cpu", model_cache=tmp_path / "worker-cache", catalog=ledger.catalog,
                    s3_endpoint_url=s3_server.endpoint)
    [fetched] = worker.render([direct_spec(model="from-s3", seed=3)]).pixels
    assert (tmp_path / "worker-cache" / "s3" / "from-s3" / "tiny-sd.safetensors").exists()
    [directory] = Runner(device="cpu", model_cache=model_cache).render([direct_spec(model="tiny-sd", seed=3)]).pixels
    assert np.array_equal(fetched, directory)
    ledger.close()


def test_a_tensor_the_checkpoint_lacks_is_an_error_not_a_meta_tensor(single_files, model_cache, tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.pipelines import sdxl
    from farm.errors import InputError

    tensors = load_file(str(single_files["tiny-sdxl"]))
    del tensors["conditioner.embedders.1.model.text_projection"]
    path = tmp_path / "no-projection.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(InputError, match=r"text_encoder_2\.text_projection\.weight not in the checkpoint .*meta"):
        sdxl.load(str(path), single_file=True, revision=None, dtype=torch.float32, cache_dir=None, arch="tiny-sdxl",
                  model_cache=model_cache)


LOAD_WITHOUT_NETWORK = """
import json, sys
attempts = []
def no_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"):
        attempts.append(event)
        raise OSError(f"test: no network ({event})")
sys.addaudithook(no_network)
import torch
from engine.pipelines import sdxl
path, model_cache = sys.argv[1:]
pipe = sdxl.load(path, single_file=True, revision=None, dtype=torch.float32, cache_dir=model_cache + "/hub",
                 arch="tiny-sdxl", model_cache=model_cache)
print(json.dumps({"loaded": type(pipe).__name__, "network": attempts}))
"""


@pytest.mark.parametrize("offline", ["1", None])
def test_loading_fetches_nothing_with_or_without_hf_hub_offline(offline, single_files, model_cache, tmp_path):
    """With HF_HUB_OFFLINE=1, and without it but with the hub unreachable: nothing is asked for."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(REPO))
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_NETWORK, str(single_files["tiny-sdxl"]), str(model_cache)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": "StableDiffusionXLPipeline", "network": []}


# -- the shipped configs of the real families -------------------------------------------------------
REAL = ["sd15", "sdxl", "ssd-1b"]


def meta_checkpoint(family: str) -> tuple[dict, dict]:
    """The real-size models of a shipped config on the meta device, in the LDM key layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.pipelines.single_file import CONFIGS

    config = CONFIGS / family
    unet_config = UNet2DConditionModel.load_config(config / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        ldm = {**unet_to_ldm(unet.state_dict(), unet_config), **vae_to_ldm(vae.state_dict(), vae.config)}
        if family == "sd15":
            ldm.update(clip_to_ldm(text.state_dict(), "cond_stage_model.transformer."))
        else:
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
            ldm.update(clip_to_ldm(text.state_dict(), "conditioner.embedders.0.transformer."))
            ldm.update(open_clip_to_ldm(text_2.state_dict(), "conditioner.embedders.1.model."))
    return ldm, {"unet": (unet.state_dict(), unet_config), "vae": (vae.state_dict(), vae.config)}


@pytest.mark.parametrize("family", REAL)
def test_the_shipped_configs_match_diffusers_key_mapping_and_the_farms_detection(family):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from farm.models.checkpoints import inspect_header
    from farm.models.weights import SafetensorsHeader, TensorInfo

    ldm, parts = meta_checkpoint(family)
    # diffusers' own single-file mapping takes our LDM names back to every key of the real-size
    # models (two layers per block, SSD-1B's pruned UNet), so a real A1111 file fits these configs
    for convert, part in ((convert_ldm_unet_checkpoint, "unet"), (convert_ldm_vae_checkpoint, "vae")):
        state, config = parts[part]
        back = convert(ldm, config)
        assert set(back) == set(state) and all(back[k].shape == state[k].shape for k in state)
    header = SafetensorsHeader(f"/{family}.safetensors", {k: TensorInfo("F16", tuple(v.shape)) for k, v in ldm.items()})
    assert inspect_header(header).arch == family


@pytest.mark.parametrize("family", REAL)
def test_the_shipped_tokenizers_are_clips(family):
    from engine.pipelines.single_file import CONFIGS, tokenizers

    made = tokenizers(CONFIGS / family)
    assert set(made) == ({"tokenizer"} if family == "sd15" else {"tokenizer", "tokenizer_2"})
    for name, tokenizer in made.items():
        ids = tokenizer("a photo of a cat", padding="max_length", max_length=9).input_ids
        # openai/clip-vit-large-patch14's ids; SDXL's second tokenizer pads with "!" (0), as OpenCLIP does
        assert ids == [49406, 320, 1125, 539, 320, 2368, 49407] + [0 if name == "tokenizer_2" else 49407] * 2
        assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408


def test_the_tiny_archs_are_told_apart_by_their_built_directories(model_cache):
    from engine.pipelines.single_file import config_dir
    from farm.models.catalog import TINY_ARCHS
    from farm.models.checkpoints import inspect

    for arch in TINY_ARCHS:
        assert inspect(config_dir(arch, model_cache)).arch == arch
