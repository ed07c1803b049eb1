"""Image inputs at submission (issue 13): each bad input ends with one line naming the field,
exit status 2, and nothing written to the ledger, the store or the queue; good inputs are stored
once, content-addressed, and name the job by their sha256 (the same input and settings are the
same job). Also: the canny preprocessor, the kinds' pure rules, and the library API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from farm.cli import cli
from farm.errors import InputError
from farm.jobs.kinds import InputInfo
from farm.jobs.spec import Catalog, JobRequest, resolve_job

SHA = "a" * 64


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise(size=(64, 64), seed=0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def farm(tmp_path, redis_server, monkeypatch, model_cache):
    """A farm home with a real Redis (no workers), one txt2img batch queued, and image files."""
    home = tmp_path / "home"
    env = {"FARM_HOME": str(home), "FARM_BROKER_URL": redis_server.url, "FARM_MODEL_CACHE": str(model_cache),
           "FARM_QUEUE": f"q{tmp_path.name[-12:].replace('_', '')}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    result = invoke(["submit", "a lighthouse", "--model", "tiny-sd", "--variants", "2", "--seed", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    from PIL import Image

    files = tmp_path / "images"
    files.mkdir()
    (files / "init.png").write_bytes(png(noise()))
    (files / "small.png").write_bytes(png(noise((32, 32))))
    (files / "mask.png").write_bytes(png(Image.new("L", (64, 64), 255)))
    (files / "notes.png").write_text("not an image at all\n")
    whole = png(noise(seed=1))
    (files / "truncated.png").write_bytes(whole[: len(whole) // 2])
    # real PNGs, a few kB each, that decode to more pixels than the limit (4096 x 4096): one between
    # the limit and twice it (PIL warns), one past twice it (PIL's DecompressionBombError)
    Image.new("1", (4200, 4200)).save(files / "huge.png", optimize=True)
    Image.new("1", (6000, 6000)).save(files / "bomb.png", optimize=True)
    return {"home": home, "env": env, "batch": json.loads(result.stdout)["batch"], "redis": redis_server,
            "files": files}


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def snapshot(farm):
    engine = create_engine(f"sqlite:///{farm['home'] / 'ledger.db'}")
    with engine.connect() as conn:
        counts = tuple(conn.execute(text(f"select count(*) from {t}")).scalar()
                       for t in ("batches", "jobs", "attempts", "artifacts", "controlnets"))
    engine.dispose()
    queue = farm["env"]["FARM_QUEUE"]
    depth = sum(farm["redis"].client().llen(k) for k in farm["redis"].client().keys(f"{queue}*"))
    store = sorted(str(p.relative_to(farm["home"])) for p in (farm["home"] / "store").rglob("*") if p.is_file()) \
        if (farm["home"] / "store").exists() else []
    return counts, depth, store


GOOD = ["a fox", "--model", "tiny-sd"]
BAD = [
    (["--init-image", "images/notes.png"], "init_image: images/notes.png: not an image (PNG, JPEG or WebP)"),
    (["--init-image", "images/truncated.png"], "init_image: images/truncated.png: truncated or corrupt PNG image"),
    (["--init-image", "images/huge.png"], "init_image: images/huge.png: over the limit of 16777216 pixels"),
    (["--init-image", "images/bomb.png"], "init_image: images/bomb.png: refused as a decompression bomb"),
    (["--control-image", "images/bomb.png", "--controlnet", "tiny-sd-canny"], "control_image: images/bomb.png: refused"),
    (["--init-image", "images/missing.png"], "init_image: images/missing.png: no such file"),
    (["--init-image", "images/init.png", "--mask", "images/small.png"],
     "mask_image: 32x32 differs from the init image's 64x64"),
    (["--init-image", "images/init.png", "--strength", "0"], "strength: 0 is outside 0 < strength <= 1"),
    (["--init-image", "images/init.png", "--strength", "1.5"], "strength: 1.5 is outside 0 < strength <= 1"),
    (["--init-image", "images/init.png", "--strength", "0.2"], "strength: 0.2 x 4 steps runs no denoising step"),
    (["--mask", "images/mask.png"], "mask_image: --mask needs --init-image"),
    (["--control-image", "images/init.png", "--controlnet", "no-such-net"], "controlnet: unknown ControlNet 'no-such-net'"),
    (["--control-image", "images/init.png", "--controlnet", "tiny-sdxl-canny"],
     "controlnet: tiny-sdxl-canny is for tiny-sdxl models, not tiny-sd"),
    (["--controlnet", "tiny-sd-canny"], "control_image: a controlnet job needs --control-image"),
    (["--control-image", "images/init.png", "--controlnet", "tiny-sd-canny", "--control-preprocess", "sobel"],
     "'--control-preprocess'"),
    (["--init-image", "images/init.png", "--kind", "upscale", "--scale", "8"], "upscale: 8 is outside 1 < upscale <= 4"),
    (["--init-image", "images/init.png", "--scale", "2", "--size", "64x64"], "size: an upscale job's size"),
    (["--init-image", "images/init.png", "--control-image", "images/init.png"], "init_image: a controlnet job takes no"),
    (["--init-image", "job:999999"], "init_image: no job 999999"),
    (["--init-image", "job:abc"], "init_image: 'job:abc': expected job:ID"),
    (["--init-image", "images/init.png", "--model", "tiny-sdxl", "--size", "4096x4096"], "width: 4096 is outside"),
]


@pytest.mark.parametrize("args,words", BAD, ids=[w.split(":")[0] + "-" + str(i) for i, (_, w) in enumerate(BAD)])
def test_bad_image_input_is_one_line_and_writes_nothing(farm, args, words):
    before = snapshot(farm)
    result = invoke(["submit", *GOOD, *args])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(farm) == before


def test_from_batch_of_an_unknown_or_empty_batch_writes_nothing(farm):
    before = snapshot(farm)
    for batch, words in (("nope", "from_batch: no batch 'nope'"),
                         (farm["batch"], f"from_batch: batch {farm['batch']} has no succeeded image")):
        result = invoke(["submit", "--from-batch", batch, "--strength", "0.5", "--variants", "2"])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {words}"), result.stderr
    assert snapshot(farm) == before


def test_an_input_is_stored_once_and_names_the_job(farm):
    before = snapshot(farm)
    args = ["submit", *GOOD, "--init-image", "images/init.png", "--strength", "0.5,0.75", "--seed", "3", "--json"]
    first = json.loads(invoke(args).stdout)
    assert (first["jobs"], first["to_render"], first["messages"]) == (2, 2, 2)  # one pipeline call per strength
    counts, depth, store = snapshot(farm)
    [stored] = [p for p in store if p.startswith("store/inputs/")]
    from engine.inputs import check_image

    sha = check_image("init_image", (farm["files"] / "init.png").read_bytes(), "x").sha256
    assert stored == f"store/inputs/{sha}.png" and depth == before[1] + 2
    jobs = json.loads(invoke(["jobs", "list", "--batch", first["batch"], "--json"]).stdout)
    assert [(j["kind"], j["init_image"], j["strength"], j["steps"], j["denoise_steps"]) for j in jobs] == [
        ("img2img", sha, 0.5, 4, 2), ("img2img", sha, 0.75, 4, 3)]
    # the same pixels in another file (a copy with a text chunk) are the same input and the same jobs
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "a copy")
    Image.open(farm["files"] / "init.png").save(farm["files"] / "copy.png", pnginfo=info)
    again = json.loads(invoke(["submit", *GOOD, "--init-image", "images/copy.png", "--strength", "0.5,0.75",
                               "--seed", "3", "--json", "--dry-run"]).stdout)
    assert again["jobs"] == 2
    digests = [j["digest"] for j in jobs]
    from farm.api import Farm

    with Farm.connect() as f:
        planned = f.plan(GOOD[0], model="tiny-sd", init_image="images/copy.png", strength=[0.5, 0.75], seed=3)
    assert [s.digest for s in planned.specs] == digests and list(planned.inputs) == [sha]


def test_canny_computes_edges_at_submission_and_stores_them_as_the_control_image(farm):
    from PIL import Image

    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[16:48, 16:48] = 255
    Image.fromarray(square).save(farm["files"] / "square.png")
    result = invoke(["submit", *GOOD, "--control-image", "images/square.png", "--controlnet", "tiny-sd-canny",
                     "--control-preprocess", "canny", "--control-scale", "0.5,1", "--json"])
    assert result.exit_code == 0, result.stderr
    jobs = json.loads(invoke(["jobs", "list", "--batch", json.loads(result.stdout)["batch"], "--json"]).stdout)
    assert [(j["kind"], j["controlnet"], j["control_scale"], j["control_preprocess"]) for j in jobs] == [
        ("controlnet", "tiny-sd-canny", 0.5, "canny"), ("controlnet", "tiny-sd-canny", 1.0, "canny")]
    edges = np.asarray(Image.open(farm["home"] / "store" / "inputs" / f"{jobs[0]['control_image']}.png"))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    ys, xs = np.nonzero(edges[..., 0])
    assert set(ys) <= {15, 16, 47, 48} | set(range(15, 49)) and ((ys >= 15) & (ys <= 48) & (xs >= 15) & (xs <= 48)).all()
    assert not edges[20:44, 20:44].any() and not edges[:10].any()  # nothing inside the square or far outside


def test_canny_edges_are_thin_and_follow_the_thresholds():
    from engine.inputs import canny_edges

    gray = np.zeros((32, 32), dtype=np.uint8)
    gray[:, 16:] = 200  # a vertical step: |gx| = 4 x 200 = 800 at the edge
    edges = canny_edges(gray, 100, 200)
    columns = set(np.nonzero(edges)[1])
    assert len(columns) == 1 and columns <= {15, 16} and edges[:, list(columns)[0]].all()
    assert not canny_edges(gray // 10, 100, 200).any()  # a step of 20 (magnitude 80) is below both thresholds


def test_kinds_are_inferred_and_checked_without_io():
    infos = {SHA: InputInfo(SHA, 100, 70), "b" * 64: InputInfo("b" * 64, 100, 70)}

    def resolve(**fields):
        return resolve_job(JobRequest(prompt="x", seed=1, **fields), Catalog(), "tiny-sd", inputs=infos)

    img = resolve(init_image=SHA)
    assert (img.kind, img.strength, img.width, img.height) == ("img2img", 0.75, 96, 64)  # rounded down to 8
    up = resolve(init_image=SHA, upscale=1.5)
    assert (up.kind, up.width, up.height, up.strength) == ("upscale", 152, 104, 0.5)  # 150x105, to 8
    inpaint = resolve(init_image=SHA, mask_image="b" * 64, mask_blur=4)
    assert (inpaint.kind, inpaint.strength, inpaint.mask_blur) == ("inpaint", 1.0, 4)
    control = resolve(control_image=SHA, controlnet="tiny-sd-canny")
    assert (control.kind, control.control_scale, control.init_image) == ("controlnet", 1.0, None)
    # per-image inputs stay out of the micro-batch key; the settings do not
    other = resolve(init_image="b" * 64)
    assert other.group_key == img.group_key and other.digest != img.digest
    assert resolve(init_image=SHA, strength=0.5).group_key != img.group_key
    with pytest.raises(InputError, match="^init_image: 'photo.png' is not a stored input image"):
        resolve_job(JobRequest(prompt="x", seed=1, init_image="photo.png"), Catalog(), "tiny-sd")
    with pytest.raises(InputError, match="^kind: img2img jobs run on the sd15, sdxl, ssd-1b families"):
        from farm.models.catalog import ModelEntry

        models = {**Catalog().models, "flowy": ModelEntry("flowy", "x/y", "flux", "flux", 64)}
        resolve_job(JobRequest(prompt="x", seed=1, model="flowy", init_image=SHA), Catalog(models=models), "tiny-sd",
                    inputs=infos)


def test_the_api_takes_the_same_options_and_writes_nothing_on_bad_input(farm):
    from farm.api import Farm

    before = snapshot(farm)
    with Farm.connect() as f:
        with pytest.raises(InputError, match="^mask_image: 32x32 differs"):
            f.submit("a fox", model="tiny-sd", init_image="images/init.png", mask_image="images/small.png")
        with pytest.raises(InputError, match="^strength: 0 is outside"):
            f.submit("a fox", model="tiny-sd", init_image="images/init.png", strength=0)
        with pytest.raises(InputError, match="^from_batch: no batch 'zzz'"):
            f.submit(from_batch="zzz", kind="upscale", upscale=2)
        assert snapshot(farm) == before
        planned = f.plan("a fox", model="tiny-sd", init_image=["images/init.png", "images/copy-of-nothing.png"]
                         [:1], kind="inpaint", mask_image="images/mask.png", mask_blur="0-2", strength=0.9)
    assert [(s.kind, s.mask_blur, s.strength) for s in planned.specs] == [("inpaint", 0, 0.9), ("inpaint", 1, 0.9),
                                                                         ("inpaint", 2, 0.9)]
    assert len(planned.inputs) == 2 and snapshot(farm) == before  # planning writes nothing


def test_importing_farm_and_its_cli_still_loads_no_pil():
    import subprocess
    import sys

    code = ("import sys, farm, farm.cli, farm.jobs.inputs, farm.jobs.kinds, farm.models.controlnets; "
            "print(','.join(m for m in ('PIL', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == ""


def test_controlnets_register_from_a_directory_or_one_file_checked_against_the_family(farm, model_cache, tmp_path):
    import shutil

    from engine.sources import resolve

    directory = Path(resolve("builtin:tiny-sd-canny", model_cache).path)
    single = tmp_path / "canny.safetensors"
    shutil.copy(directory / "diffusion_pytorch_model.safetensors", single)
    lora = Path(resolve("builtin:tiny-sd-toy", model_cache).path) / "pytorch_lora_weights.safetensors"
    before = snapshot(farm)
    for args, words in (
        (["mine", "--source", str(directory), "--family", "tiny-sdxl"], "family: "),
        (["mine", "--source", str(single), "--family", "tiny-sdxl"], "attends to text 32 wide; tiny-sdxl models' is 96"),
        (["mine", "--source", str(lora), "--family", "tiny-sd"], "holds no ControlNet"),
        (["tiny-sd-canny", "--source", str(directory), "--family", "tiny-sd"], "name: tiny-sd-canny is a built-in"),
        (["mine", "--source", str(directory), "--family", "tiny-flux"], "'--family'"),
    ):
        result = invoke(["controlnets", "add", *args])
        assert result.exit_code == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            result.stderr
    assert snapshot(farm) == before
    added = json.loads(invoke(["controlnets", "add", "mine-dir", "--source", str(directory), "--family", "tiny-sd",
                               "--json"]).stdout)
    assert (added["layout"], added["sha256"]) == ("diffusers", None)
    added = json.loads(invoke(["controlnets", "add", "mine-file", "--source", str(single), "--family", "tiny-sd",
                               "--json"]).stdout)
    import hashlib

    assert (added["layout"], added["sha256"]) == ("single-file", hashlib.sha256(single.read_bytes()).hexdigest())
    listed = {c["name"]: c for c in json.loads(invoke(["controlnets", "list", "--json"]).stdout)}
    assert {"tiny-sd-canny", "tiny-sdxl-canny", "controlnet-canny-sd15", "mine-dir", "mine-file"} <= set(listed)
    ok = invoke(["submit", *GOOD, "--control-image", "images/init.png", "--controlnet", "mine-file", "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert invoke(["controlnets", "remove", "mine-dir"]).exit_code == 0
    assert "mine-dir" not in {c["name"] for c in json.loads(invoke(["controlnets", "list", "--json"]).stdout)}
    result = invoke(["controlnets", "remove", "tiny-sd-canny"])
    assert result.exit_code != 0 and "built-in" in result.stderr


def test_a1111_parameters_of_each_kind_parse_as_a1111_reads_them():
    from dataclasses import replace

    from farm.models.catalog import BUILTIN_CONTROLNETS, ControlNetEntry
    from farm.results.metadata import a1111_parameters, job_record, resource_hashes
    from tests import a1111

    infos = {SHA: InputInfo(SHA, 64, 64), "b" * 64: InputInfo("b" * 64, 64, 64)}
    controlnets = {**BUILTIN_CONTROLNETS, "mine": ControlNetEntry("mine", "/x.safetensors", "tiny-sd", sha256="c" * 64,
                                                                  layout="single-file", builtin=False)}
    catalog = Catalog(controlnets=controlnets)

    def text(**fields):
        spec = resolve_job(JobRequest(prompt="a fox, at dusk", seed=7, **fields), catalog, "tiny-sd", inputs=infos)
        record = job_record(spec, job_id=3, batch="b", index=0, worker="w", device="cpu", versions={},
                            hashes=resource_hashes(spec, catalog))
        return a1111.parse(a1111_parameters(record)), record

    parsed, record = text(init_image=SHA, strength=0.5)
    assert (parsed["Prompt"], parsed["Seed"], parsed["Denoising strength"]) == ("a fox, at dusk <lora:tiny-sd-lcm-lora:1>",
                                                                             "7", "0.5")
    assert (record["init_image"], record["denoise_steps"], record["steps"]) == (SHA, 2, 4)
    parsed, record = text(init_image=SHA, mask_image="b" * 64, mask_blur=4, strength=0.8)
    assert (parsed["Mask blur"], parsed["Denoising strength"], record["mask_image"]) == ("4", "0.8", "b" * 64)
    parsed, _ = text(init_image=SHA, upscale=1.5)
    assert (parsed["Hires upscale"], parsed["Hires upscaler"], parsed["Denoising strength"]) == ("1.5", "Lanczos", "0.5")
    parsed, record = text(control_image=SHA, controlnet="mine", control_scale=0.8, control_preprocess="canny")
    assert parsed["ControlNet 0"] == ("Module: canny, Model: mine [cccccccc], Weight: 0.8, Resize Mode: Just Resize, "
                                      "Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, "
                                      "Pixel Perfect: False, Control Mode: Balanced")
    assert (parsed["Steps"], parsed["Model"], record["control_image"]) == ("4", "tiny-sd", SHA)
    assert "Denoising strength" not in parsed
    plain = replace(resolve_job(JobRequest(prompt="x", seed=1), catalog, "tiny-sd"))
    assert "denoise_steps" not in job_record(plain, job_id=1, batch="b", index=0, worker="w", device="cpu", versions={})
