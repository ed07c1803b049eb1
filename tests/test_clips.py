"""Clips (issue 27), the pure part: what a clip request resolves to and what is refused at
submission; the motion module registry's checks; the clip files' encoding and metadata."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from farm.errors import InputError
from farm.jobs.spec import Catalog, JobRequest, resolve_job


def clip(**fields):
    return resolve_job(JobRequest(prompt="a red circle", seed=1, **fields), Catalog(), "tiny-sd")


def test_a_clip_request_resolves_to_its_frames_motion_module_and_recipe():
    spec = clip(frames=12, fps=6)
    assert spec.kind == "clip"  # --frames implies it
    assert spec.clip == {"frames": 12, "fps": 6, "motion": "tiny-sd-motion", "format": "webp"}
    assert (spec.recipe, spec.scheduler, spec.steps) == ("lcm-lora", "LCMScheduler", 4)
    assert [a.name for a in spec.adapters] == ["tiny-sd-lcm-lora"]
    lightning = clip(kind="clip", recipe="animatediff-lightning")
    assert lightning.clip["motion"] == "tiny-sd-motion-lightning-4step"
    assert (lightning.steps, lightning.scheduler, lightning.adapters) == (4, "EulerDiscreteScheduler", ())
    assert lightning.scheduler_config == {"timestep_spacing": "trailing"}


def test_a_clip_digest_and_group_key_change_with_its_settings():
    a, b = clip(frames=8), clip(frames=8, video_format="mp4")
    assert a.digest != b.digest and a.group_key != b.group_key
    assert clip(frames=8).digest == a.digest
    image = resolve_job(JobRequest(prompt="a red circle", seed=1), Catalog(), "tiny-sd")
    assert image.clip is None and image.digest != a.digest


def test_a_real_motion_module_brings_its_noise_schedule():
    sd15 = resolve_job(JobRequest(prompt="a fox", seed=1, kind="clip", model="sd15"), Catalog(), "tiny-sd")
    assert sd15.clip["motion"] == "animatediff-v1-5-3"
    assert sd15.scheduler_config["beta_schedule"] == "linear"  # AnimateDiff's training schedule


@pytest.mark.parametrize("fields, message", [
    ({"frames": 40}, "frames: 40 is outside 8..32"),
    ({"frames": 4}, "frames: 4 is outside 8..32"),
    ({"frames": 8, "model": "tiny-flux"}, "clip jobs run on the sd15 family"),
    ({"kind": "clip", "model": "tiny-sd3"}, "clip jobs run on the sd15 family"),
    ({"kind": "clip", "model": "tiny-sdxl"}, "clip jobs run on the sd15 family"),
    ({"frames": 8, "motion": "animatediff-sdxl-beta"}, "is a motion module for sdxl models"),
    ({"frames": 8, "motion": "no-such-module"}, "unknown motion module"),
    ({"fps": 3, "kind": "img2img"}, "--fps is a clip option"),
    ({"recipe": "animatediff-lightning"}, "renders clips"),
    ({"kind": "clip", "recipe": "animatediff-lightning", "steps": 2}, "distilled for 4 steps, not 2"),
    ({"kind": "clip", "motion": "tiny-sd-motion-lightning-4step"}, "runs with --recipe animatediff-lightning"),
    ({"kind": "clip", "steps": 2}, "2 is outside 4..8 for a lcm-lora clip"),
    ({"kind": "clip", "recipe": "hyper"}, "clips render with lcm-lora or animatediff-lightning"),
    ({"kind": "clip", "fps": 0}, "fps"),
    ({"kind": "clip", "video_format": "gif"}, "'gif' is not a clip format"),
    ({"kind": "clip", "init_image": "0" * 64}, "a clip job takes no --init-image"),
])
def test_bad_clip_requests_are_refused_at_submission(fields, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        clip(**fields)


def test_the_cli_refuses_a_bad_clip_in_one_line_and_writes_nothing(farm_env, tmp_path):
    for args, message in ((["--frames", "40"], "frames: 40 is outside 8..32"),
                          (["--kind", "clip", "--model", "tiny-flux"], "clip jobs run on the sd15 family")):
        result = subprocess.run([sys.executable, "-m", "farm.cli", "submit", "a red circle", *args], env=farm_env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()  # refused before the farm's home, its ledger, was made


# -- the registry's look into files ------------------------------------------------------------------
def _motion_file(path, widths, *, original=False):
    from safetensors.numpy import save_file

    norm = "temporal_transformer.norm" if original else "norm"
    tensors = {f"down_blocks.{i}.motion_modules.0.{norm}.weight": np.ones(w, dtype=np.float32)
               for i, w in enumerate(widths)}
    save_file(tensors, str(path))
    return path


def test_a_motion_file_is_checked_against_its_family(tmp_path):
    from farm.models.motion import motion_entry, with_file

    sd15 = _motion_file(tmp_path / "mm_sd15.safetensors", (320, 640, 1280, 1280), original=True)
    entry = with_file(motion_entry("mine", source=str(sd15), family="sd15", cwd=tmp_path), sd15)
    assert entry.sha256 and entry.arch == "sd15" and not entry.builtin
    sdxl = _motion_file(tmp_path / "mm_sdxl.safetensors", (320, 640, 1280))
    with pytest.raises(InputError, match="a motion module for sdxl models"):
        with_file(motion_entry("mine", source=str(sdxl), family="sd15", cwd=tmp_path), sdxl)
    pickle = tmp_path / "mm.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="only .safetensors"):
        motion_entry("mine", source=str(pickle), family="sd15", cwd=tmp_path)
    with pytest.raises(InputError, match="built-in motion module"):
        motion_entry("tiny-sd-motion", source=str(sd15), family="tiny-sd", cwd=tmp_path)
    with pytest.raises(InputError, match="give the step count"):
        motion_entry("fast", source=str(sd15), family="sd15", recipe="animatediff-lightning", cwd=tmp_path)


# -- files --------------------------------------------------------------------------------------------
def frames(n=8, size=32):
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_a_webp_clip_is_lossless_animated_and_carries_its_metadata():
    from PIL import Image

    from engine.clips import encode_clip, read_frames, read_metadata
    from tests import a1111

    clip_frames = frames()
    parameters = "a red circle\nSteps: 4, Sampler: LCM, CFG scale: 1, Seed: 7, Size: 32x32"
    record = json.dumps({"seed": 7, "note": "<&>"})
    data = encode_clip(clip_frames, 8, "webp", parameters, record)
    assert data == encode_clip(clip_frames, 8, "webp", parameters, record)  # the same bytes every time
    with Image.open(io.BytesIO(data)) as image:
        image.seek(1)
        image.load()  # Pillow reads a frame's duration as it decodes the frame
        assert image.format == "WEBP" and image.n_frames == 8 and image.info["duration"] == 125
    assert np.array_equal(np.stack(read_frames(data)), clip_frames)
    meta = read_metadata(data)
    assert meta["parameters"] == parameters and json.loads(meta["farm"]) == {"seed": 7, "note": "<&>"}
    assert a1111.parse(meta["parameters"])["Seed"] == "7"


def test_an_mp4_clip_plays_with_its_frames_and_metadata():
    pytest.importorskip("av")
    from engine.clips import encode_clip, read_frames, read_metadata

    clip_frames = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :, None], 32, axis=1)
    clip_frames = np.repeat(np.repeat(clip_frames, 3, axis=3), 8, axis=0)
    data = encode_clip(clip_frames, 12, "mp4", "a red circle\nSeed: 7", '{"seed": 7}')
    assert data[4:8] == b"ftyp" and data == encode_clip(clip_frames, 12, "mp4", "a red circle\nSeed: 7", '{"seed": 7}')
    decoded = read_frames(data)
    assert len(decoded) == 8 and decoded[0].shape == (32, 32, 3)
    assert np.abs(decoded[3].astype(int) - clip_frames[3]).mean() < 4  # lossy H.264, close
    assert read_metadata(data) == {"parameters": "a red circle\nSeed: 7", "farm": '{"seed": 7}'}


def test_the_gallery_plays_clips():
    from farm.results.gallery import gallery_html, output_name

    assert output_name(3, 7, "batches/b/00003-7.webp") == "00003-7.webp"
    assert output_name(3, 7) == "00003-7.png"
    job = {"prompt": "a red circle", "seed": 7, "steps": 4, "guidance": 1.0, "width": 64, "height": 64,
           "model": "tiny-sd", "recipe": "lcm-lora", "kind": "clip",
           "clip": {"frames": 8, "fps": 8, "motion": "tiny-sd-motion", "format": "mp4"}}
    page = gallery_html("b", [("00000-7.mp4", job), ("00001-8.webp", {**job, "seed": 8})])
    assert '<video src="00000-7.mp4" autoplay loop muted' in page
    assert '<img src="00001-8.webp"' in page and "8 frames at 8 fps" in page
