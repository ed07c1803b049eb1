"""Jobs that start from images (issue 13), end to end through a real worker process: every kind on
both families (tiny SD1.5 and SDXL), inputs from local files, s3:// and earlier jobs, stored in an
S3 store and fetched by the worker; A1111 metadata a third-party parser reads; replay; reuse;
variations of a batch with its contact sheet and gallery."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import a1111, servers

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("tiny-sd", "tiny-sdxl")
SHEET_COPY = Path("/tmp/farm-variations-sheet.png")  # kept for a person to look at


def farm_cli(*args, env, check=True):
    result = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=env["FARM_WORKDIR"],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"farm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def texts(data: bytes) -> dict:
    from engine.imaging import read_png_text

    return read_png_text(data)


def pixels(data: bytes):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def local(tmp_path_factory, s3_server, model_cache):
    """A local farm (private Redis, SQLite ledger, one worker) whose store is an S3 bucket."""
    import farm

    base = tmp_path_factory.mktemp("images")
    bucket = "image-inputs"
    s3_server.client().create_bucket(Bucket=bucket)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(servers.S3_ENV, FARM_HOME=str(base / "home"), FARM_MODEL_CACHE=str(model_cache),
               FARM_STORE_URL=f"s3://{bucket}/farm", FARM_S3_ENDPOINT_URL=s3_server.endpoint,
               FARM_WORKDIR=str(base))
    from PIL import Image

    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / "photo.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255  # repaint the middle
    Image.fromarray(mask).save(base / "mask.png")
    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[12:52, 20:44] = 255
    Image.fromarray(square).save(base / "shape.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    s3_server.client().put_object(Bucket=bucket, Key="uploads/photo.jpg", Body=buffer.getvalue())
    previous = os.getcwd()
    os.chdir(base)  # relative image paths in the API calls resolve here, as the CLI's do
    try:
        with farm.Farm.local(workers=1, env=env) as f:
            yield {"farm": f, "env": env, "base": base, "bucket": bucket, "s3": s3_server.client()}
    finally:
        os.chdir(previous)


def stored(local, view) -> bytes:
    return local["s3"].get_object(Bucket=local["bucket"], Key=f"farm/{view.artifact.key}")["Body"].read()


def done(local, batch: str, jobs: int) -> list:
    counts = local["farm"].wait(batch, timeout=600)
    assert counts["succeeded"] == jobs, (counts, [v.last_error for v in local["farm"].jobs(batch)])
    return local["farm"].jobs(batch)


@pytest.fixture(scope="module")
def sources(local):
    """A txt2img batch on both families: the images later batches start from."""
    lines = [json.dumps({"prompt": f"a lighthouse, {m}", "model": m, "variants": 2}) for m in MODELS]
    (local["base"] / "sources.jsonl").write_text("\n".join(lines) + "\n")
    batch = local["farm"].submit(file="sources.jsonl", seed=300)
    return batch, done(local, batch, 4)


@pytest.mark.workers
@pytest.mark.slow
def test_every_kind_on_both_families_renders_through_a_worker(local, sources):
    """img2img (local PNG and s3:// JPEG), inpaint, ControlNet with canny computed at submission
    and a style LoRA on LCM-LoRA, and an upscale of an earlier job, on tiny SD1.5 and SDXL."""
    f, bucket = local["farm"], local["bucket"]
    _, source_jobs = sources
    rows = []
    for model in MODELS:
        rows += [
            {"prompt": "a harbour", "model": model, "kind": "img2img", "init_image": "photo.png", "strength": 0.5},
            {"prompt": "a harbour", "model": model, "init_image": f"s3://{bucket}/uploads/photo.jpg", "strength": 0.75},
            {"prompt": "a harbour", "model": model, "init_image": "photo.png", "mask_image": "mask.png",
             "mask_blur": 2},
            {"prompt": "a harbour", "model": model, "control_image": "shape.png", "controlnet": f"{model}-canny",
             "control_preprocess": "canny", "control_scale": 0.8, "adapters": [f"{model}-toy:0.7"]},
            {"model": model, "init_image": f"job:{next(j.id for j in source_jobs if j.spec.model == model)}",
             "kind": "upscale", "upscale": 2, "strength": 0.5, "prompt": "a lighthouse, sharper"},
        ]
    (local["base"] / "kinds.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    submitted = f.submit_plan(f.plan(file="kinds.jsonl", seed=11))
    jobs = done(local, submitted.batch, len(rows))
    kinds = [j.spec.kind for j in jobs]
    assert kinds == ["img2img", "img2img", "inpaint", "controlnet", "upscale"] * 2
    keys = {o["Key"] for o in local["s3"].list_objects_v2(Bucket=bucket, Prefix="farm/inputs/")["Contents"]}
    for job in jobs:
        for sha in (job.spec.init_image, job.spec.mask_image, job.spec.control_image):
            assert sha is None or f"farm/inputs/{sha}.png" in keys  # stored once, by sha256
        data = stored(local, job)
        record = json.loads(texts(data)["farm"])
        parsed = a1111.parse(texts(data)["parameters"])  # as A1111's own reader splits it
        assert parsed["Seed"] == str(job.seed) and parsed["Steps"] == "4" and parsed["Model"] == job.spec.model
        assert record["kind"] == job.spec.kind and record["init_image"] == job.spec.init_image
        image = pixels(data)
        if job.spec.kind == "upscale":
            assert image.shape == (128, 128, 3) and parsed["Hires upscale"] == "2" and parsed["Hires upscaler"] == "Lanczos"
            assert parsed["Denoising strength"] == "0.5" and record["denoise_steps"] == 2
        else:
            assert image.shape == (64, 64, 3)
        if job.spec.kind == "img2img":
            assert parsed["Denoising strength"] == f"{job.spec.strength:g}"
            assert record["denoise_steps"] == int(4 * job.spec.strength)
        if job.spec.kind == "inpaint":
            assert (parsed["Mask blur"], parsed["Denoising strength"]) == ("2", "1")
            assert record["mask_image"] == job.spec.mask_image
            photo = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(local["base"] / "photo.png"))
            assert np.array_equal(image[:8], photo[:8]) and np.array_equal(image[:, :8], photo[:, :8])  # kept
            assert not np.array_equal(image[24:40, 24:40], photo[24:40, 24:40])  # repainted
        if job.spec.kind == "controlnet":
            unit = parsed["ControlNet 0"]
            assert unit.startswith(f"Module: canny, Model: {job.spec.model}-canny, Weight: 0.8, ")
            assert "Threshold A: 100, Threshold B: 200" in unit
            assert parsed["Lora weights"] == f"{job.spec.model}-lcm-lora: 1, {job.spec.model}-toy: 0.7"
            assert record["control_preprocess"] == "canny" and "Denoising strength" not in parsed
    # every kind replays to the same pixels from its record (input fetched from the store again)
    for job in jobs[:5]:
        report = f.replay(job.id)
        assert report["max_difference"] == 0, (job.spec.kind, report)
    # the same inputs and settings are the same jobs: nothing renders again
    again = f.submit_plan(f.plan(file="kinds.jsonl", seed=11))
    assert (again.jobs, again.to_render, again.reused) == (len(rows), 0, len(rows))


@pytest.mark.workers
@pytest.mark.slow
def test_variations_of_a_batch_with_their_sources_on_the_sheet_and_in_the_gallery(local, sources, tmp_path):
    """`farm submit --from-batch B --strength 0.3,0.6 --variants 2`: every image of B (both
    families, prompts and models lent by the source jobs) crossed with the strengths and seeds."""
    batch, source_jobs = sources
    env = local["env"]
    submitted = json.loads(farm_cli("submit", "--from-batch", batch, "--strength", "0.3,0.6", "--variants", "2",
                                    "--seed", "40", "--json", env=env).stdout)
    assert (submitted["jobs"], submitted["to_render"]) == (16, 16)
    jobs = done(local, submitted["batch"], 16)
    for job in jobs:
        source = next(j for j in source_jobs if job.axes["init_image"] == f"job:{j.id}")
        assert (job.spec.prompt, job.spec.model, job.spec.kind) == (source.spec.prompt, source.spec.model, "img2img")
        assert job.spec.init_image is not None
    assert len({j.spec.init_image for j in jobs}) == 4
    # one pipeline call per source model, strength (and micro-batch): images of different sources share it
    assert {j.batch_size for j in jobs} == {4}

    sheet = tmp_path / "sheet.png"
    report = json.loads(farm_cli("results", "sheet", submitted["batch"], "--out", str(sheet), "--json",
                                 env=env).stdout)
    assert (report["rows"], report["columns"], report["row_axis"]) == (4, 5, "init_image")  # source + 2 x 2
    assert report["column_axis"] == "strength+seed"
    SHEET_COPY.write_bytes(sheet.read_bytes())
    out = tmp_path / "gallery"
    fetched = json.loads(farm_cli("results", "get", submitted["batch"], "--out", str(out), "--json", env=env).stdout)
    assert len(fetched["outputs"]) == 16
    page = (out / "index.html").read_text()
    for sha in {j.spec.init_image for j in jobs}:
        assert f'src="inputs/{sha}.png"' in page and (out / "inputs" / f"{sha}.png").is_file()

    # an upscale of the whole batch, through the library, prompts lent again
    upscaled = local["farm"].submit(from_batch=batch, kind="upscale", upscale=1.5, strength=0.5, seed=1)
    big = done(local, upscaled, 4)
    assert {pixels(stored(local, j)).shape for j in big} == {(96, 96, 3)}
