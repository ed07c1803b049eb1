"""Clips (issue 27) end to end through a real worker process on the tiny models: a sweep of clips
renders and plays in the gallery, every clip replays to identical frames, a clip's frames are the
same alone and inside a micro-batch, a clip is reused by its digest, a registered single-file
motion module renders, and an MP4 clip plays with its metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import a1111

SHEET_COPY = Path("/tmp/farm-clips-sheet.png")  # kept for a person to look at


@pytest.fixture(scope="module")
def local(tmp_path_factory, model_cache):
    """A local farm (private Redis, SQLite ledger, file store, one worker)."""
    import farm

    base = tmp_path_factory.mktemp("clips")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(base / "home"), FARM_MODEL_CACHE=str(model_cache))
    with farm.Farm.local(workers=1, env=env) as f:
        yield {"farm": f, "env": env, "base": base}


def done(f, batch: str, jobs: int) -> list:
    counts = f.wait(batch, timeout=600)
    assert counts["succeeded"] == jobs, (counts, [v.last_error for v in f.jobs(batch)])
    return f.jobs(batch)


def stored(f, view) -> bytes:
    from farm.results.artifacts import ArtifactReader

    return ArtifactReader().read(view.artifact.store_url, view.artifact.key, view.artifact.sha256)


def frames_of(data: bytes) -> np.ndarray:
    from engine.clips import read_frames

    return np.stack(read_frames(data))


@pytest.fixture(scope="module")
def sweep(local):
    """Two prompts x two seeds x steps 4 and 6: eight 8-frame clips in two micro-batches."""
    f = local["farm"]
    (local["base"] / "prompts.txt").write_text("a red circle\na blue square\n")
    batch = f.submit(file=str(local["base"] / "prompts.txt"), kind="clip", frames=8, fps=10, seeds="1-2",
                     steps="4,6")
    return batch, done(f, batch, 8)


@pytest.mark.workers
@pytest.mark.slow
def test_a_sweep_of_clips_renders_and_plays_in_the_gallery(local, sweep, tmp_path):
    f = local["farm"]
    batch, jobs = sweep
    for view in jobs:
        data = stored(f, view)
        assert view.artifact.key.endswith(".webp") and view.artifact.content_type == "image/webp"
        clip = frames_of(data)
        assert clip.shape == (8, 64, 64, 3)
        assert not np.array_equal(clip[0], clip[-1])  # frames, not one image repeated
        from engine.clips import read_metadata

        meta = read_metadata(data)
        parameters = a1111.parse(meta["parameters"])
        assert parameters["Seed"] == str(view.spec.seed) and parameters["Steps"] == str(view.spec.steps)
        assert "video_length: 8, fps: 10" in parameters["AnimateDiff"]
        record = json.loads(meta["farm"])
        assert record["digest"] == view.digest and record["clip"] == view.spec.clip
        for stage in ("denoise", "vae_decode", "image_encode", "upload"):  # per-stage timings of a clip
            assert view.timings[stage] > 0, stage
    assert {v.batch_size for v in jobs} == {4}  # each steps value's four clips shared one pipeline call

    out = tmp_path / "out"
    paths = f.download(batch, out)
    assert sorted(p.suffix for p in paths) == [".webp"] * 8
    page = (out / "index.html").read_text()
    for path in paths:
        assert f'<img src="{path.name}"' in page  # an animated WebP plays as an image does
    assert "8 frames at 10 fps, webp" in page
    from PIL import Image

    with Image.open(paths[0]) as image:
        assert image.is_animated and image.n_frames == 8

    sheet = f.contact_sheet(batch, tmp_path / "sheet.png")
    assert sheet["columns"] * sheet["rows"] >= 4
    SHEET_COPY.write_bytes((tmp_path / "sheet.png").read_bytes())
    with Image.open(tmp_path / "sheet.png") as image:
        assert image.width >= 3 * 128  # each cell holds the first, middle and last frame side by side


@pytest.mark.workers
@pytest.mark.slow
def test_every_clip_replays_to_identical_frames(local, sweep):
    f = local["farm"]
    _, jobs = sweep
    for view in jobs[:2] + jobs[-1:]:
        result = f.replay(view.id)
        assert result["max_difference"] == 0 and result["values"] == 8 * 64 * 64 * 3, result


@pytest.mark.workers
@pytest.mark.slow
def test_a_clip_has_the_same_frames_alone_and_in_a_micro_batch_and_is_reused_by_digest(local, sweep):
    f = local["farm"]
    _, jobs = sweep
    inside = next(v for v in jobs if v.spec.prompt == "a blue square" and v.spec.seed == 2 and v.spec.steps == 6)
    alone_batch = f.submit("a blue square", kind="clip", frames=8, fps=10, seed=2, steps=6, force=True)
    [alone] = done(f, alone_batch, 1)
    assert alone.reused_from is None and alone.digest == inside.digest
    assert np.array_equal(frames_of(stored(f, alone)), frames_of(stored(f, inside)))
    again = f.submit("a blue square", kind="clip", frames=8, fps=10, seed=2, steps=6)
    [reused] = done(f, again, 1)
    assert reused.reused_from is not None and reused.artifact.sha256 == inside.artifact.sha256


@pytest.mark.workers
@pytest.mark.slow
def test_a_lightning_clip_and_an_mp4_clip_render(local, tmp_path):
    pytest.importorskip("av")
    f = local["farm"]
    batch = f.submit("a yellow triangle", kind="clip", recipe="animatediff-lightning", frames=8, seed=5,
                     video_format="mp4")
    [view] = done(f, batch, 1)
    assert view.spec.scheduler == "EulerDiscreteScheduler" and view.spec.steps == 4
    assert view.artifact.key.endswith(".mp4") and view.artifact.content_type == "video/mp4"
    data = stored(f, view)
    assert frames_of(data).shape == (8, 64, 64, 3)
    from engine.clips import read_metadata

    assert a1111.parse(read_metadata(data)["parameters"])["Seed"] == "5"
    paths = f.download(batch, tmp_path / "out")
    assert '<video src="' + paths[0].name + '" autoplay loop muted' in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.workers
@pytest.mark.slow
def test_a_registered_single_file_motion_module_renders(local, model_cache):
    """`farm motion add` with one .safetensors file (as AnimateDiff-Lightning ships its modules):
    checked against its family, refused for another, then loaded from the file by the worker."""
    f, env = local["farm"], local["env"]
    from engine.sources import resolve

    directory = Path(resolve("builtin:tiny-sd-motion", model_cache).path)
    weights = next(directory.glob("*.safetensors"))

    def farm_cli(*args):
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, capture_output=True, text=True,
                              timeout=300, cwd=local["base"])

    refused = farm_cli("motion", "add", "wrong", "--source", str(weights), "--family", "sd15")
    assert refused.returncode != 0 and "a motion module for tiny-sd models" in refused.stderr
    added = farm_cli("motion", "add", "my-motion", "--source", str(weights), "--family", "tiny-sd", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["sha256"]
    listed = json.loads(farm_cli("motion", "list", "--json").stdout)
    assert "my-motion" in {m["name"] for m in listed}
    batch = f.submit("a green circle", kind="clip", frames=8, seed=9, motion="my-motion")
    [view] = done(f, batch, 1)
    assert view.environment["motion_sha256"]["my-motion"] == json.loads(added.stdout)["sha256"]
    assert view.spec.scheduler_config == {"beta_schedule": "linear"}  # AnimateDiff's, a registered module's default
    assert frames_of(stored(f, view)).shape == (8, 64, 64, 3)
    # the file, read with a config taken off its weights, is the built-in module weight for weight
    import torch
    from diffusers import MotionAdapter

    from engine.clips import single_file_adapter

    from_file = single_file_adapter(str(weights), "tiny-sd").state_dict()
    from_directory = MotionAdapter.from_pretrained(str(directory)).state_dict()
    assert from_file.keys() == from_directory.keys()
    assert all(torch.equal(from_file[k], from_directory[k]) for k in from_file)
