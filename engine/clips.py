"""Clips (issue 27): AnimateDiff on a resident SD1.5-family model, and the clip files.

- The pipeline is diffusers' ``AnimateDiffPipeline`` made of a freshly loaded model's modules and
  a ``MotionAdapter``: its constructor turns the UNet into a ``UNetMotionModel`` (a copy of the
  2D UNet's weights plus the temporal layers), so it cannot share the image pipeline's UNet; it is
  a resident of its own (model + motion module), and LoRAs load into it as into any pipeline.
- Frames are decoded clip by clip (all of one clip's frames in one VAE call), so a clip's pixels
  never depend on which clips shared its micro-batch, and the padding rows are never decoded.
- Files: an animated WebP, lossless (Pillow's libwebp, no external binary), so the stored frames
  are the rendered ones bit for bit and a replay compares exactly; or an MP4 (H.264 through PyAV,
  whose wheel ships FFmpeg) when asked, which is lossy. Both carry the A1111 ``parameters`` text
  and the farm's JSON record: WebP in EXIF UserComment (where A1111 puts it) and XMP; MP4 in the
  ``comment`` and ``description`` tags.
"""

from __future__ import annotations

import html
import io
import re
from typing import Any

from farm.errors import InputError

USER_COMMENT, EXIF_IFD = 0x9286, 0x8769
_XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:farm="urn:farm:record:1"><farm:record>{}</farm:record></rdf:Description>'
        "</rdf:RDF></x:xmpmeta>")
_XMP_RE = re.compile(rb"<farm:record>(.*?)</farm:record>", re.S)
# libwebp's fastest lossless effort (cwebp -z 0): the frames are the same bit for bit at any effort,
# only the file's size changes. Pillow's method=4 at quality 100 took 107 ms for a 16-frame 64 px
# clip and 8.2 s for a 256 px one (a worker's encoding competed with its renders for the cores);
# this takes 5 ms and 0.1 s for files 25-29% larger (docs/benchmarks.md, clips).
WEBP_EFFORT = {"method": 0, "quality": 0}


# -- the pipeline -----------------------------------------------------------------------------------
def load_motion_adapter(runner, name: str, dtype):
    """The motion module ``name`` from the catalog: a diffusers directory or hub repo, or one
    ``.safetensors`` file (diffusers keys, or the original AnimateDiff keys converted)."""
    from diffusers import MotionAdapter

    entry = runner.catalog.motion_adapters.get(name)
    if entry is None:
        runner.catalog = runner._load_catalog()  # registered after this worker started?
        entry = runner.catalog.motion_adapters.get(name)
    if entry is None:
        raise InputError("motion", f"unknown motion module {name!r} (removed since the job was submitted?)")
    location = runner._resolve(entry)
    path = location.path
    if location.is_hub and entry.weight_name:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(location.path, entry.weight_name, revision=entry.revision,
                               cache_dir=str(runner.model_cache / "hub"))
    elif entry.weight_name and not location.single_file:
        path = f"{location.path.rstrip('/')}/{entry.weight_name}"
    if not str(path).endswith(".safetensors"):
        adapter = MotionAdapter.from_pretrained(path, revision=entry.revision if location.is_hub else None,
                                                cache_dir=str(runner.model_cache / "hub"), use_safetensors=True)
        return adapter.to(dtype), entry
    return single_file_adapter(str(path), entry.arch).to(dtype), entry


def single_file_adapter(path: str, arch: str):
    """A ``MotionAdapter`` from one file, its config read off its weights (as AnimateDiff-Lightning's
    card loads its files: ``MotionAdapter()`` and ``load_state_dict``)."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
    from safetensors.torch import load_file

    from farm.models.motion import block_widths

    state = load_file(path)
    if any("temporal_transformer" in k for k in state):
        state = convert_animatediff_checkpoint_to_diffusers(state)
    widths = block_widths({k: tuple(v.shape) for k, v in state.items()})
    per_block = len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.motion_modules.")})
    positions = next((v.shape[1] for k, v in state.items() if k.endswith("pos_embed.pe")), 32)
    config = {"block_out_channels": widths, "motion_layers_per_block": max(1, per_block),
              "use_motion_mid_block": any(k.startswith("mid_block.") for k in state),
              "motion_max_seq_length": positions, "motion_num_attention_heads": 4 if arch == "tiny-sd" else 8}
    adapter = MotionAdapter(**config)
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        detail = (list(missing) or list(unexpected))[0]
        raise InputError("motion", f"{path}: not a motion module for {arch} models ({len(missing)} weights missing, "
                                   f"{len(unexpected)} unexpected, e.g. {detail})")
    return adapter


def clip_pipeline(runner, pipe, motion: str, dtype):
    """An ``AnimateDiffPipeline`` of ``pipe``'s modules (loaded for it alone) and the motion module."""
    from diffusers import AnimateDiffPipeline

    adapter, _entry = load_motion_adapter(runner, motion, dtype)
    clip = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                               motion_adapter=adapter, scheduler=pipe.scheduler, feature_extractor=None,
                               image_encoder=None)
    clip.unet.to(dtype)
    clip.set_progress_bar_config(disable=True)
    return clip


def motion_digest(runner, motion: str) -> str | None:
    entry = runner.catalog.motion_adapters.get(motion)
    return None if entry is None else entry.sha256


# -- decoding ---------------------------------------------------------------------------------------
def decode_frames(family, pipe, latents, clips: int, vae=None) -> Any:
    """Latents (rows, C, F, h, w) to uint8 frames (clips, F, H, W, 3), one VAE call per clip."""
    import torch

    out = []
    for i in range(clips):
        frames = latents[i].permute(1, 0, 2, 3)  # (F, C, h, w): a clip's frames are a batch of images
        images = family.decode(pipe, frames, vae)
        out.append(((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.stack(out).cpu().numpy()


# -- files ------------------------------------------------------------------------------------------
def encode_clip(frames, fps: int, video_format: str, parameters: str, record_json: str) -> bytes:
    """(F, H, W, 3) uint8 frames to an animated WebP (lossless) or an MP4, with the job's metadata."""
    if video_format == "webp":
        return _encode_webp(frames, fps, parameters, record_json)
    if video_format == "mp4":
        return _encode_mp4(frames, fps, parameters, record_json)
    raise InputError("video_format", f"{video_format!r} is not a clip format")


def _encode_webp(frames, fps: int, parameters: str, record_json: str) -> bytes:
    from PIL import Image

    images = [Image.fromarray(frame, "RGB") for frame in frames]
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")  # as A1111 writes it
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, lossless=True, **WEBP_EFFORT, exif=exif.tobytes(),
                   xmp=_XMP.format(html.escape(record_json)).encode())
    return buffer.getvalue()


def _encode_mp4(frames, fps: int, parameters: str, record_json: str) -> bytes:
    try:
        import av
    except ImportError:
        raise InputError("video_format", "mp4 clips need PyAV on the worker (pip install 'farm[video]')") from None
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        container.metadata["comment"] = parameters
        container.metadata["description"] = record_json
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"  # what every player decodes (H.264 high profile, 4:2:0)
        stream.codec_context.thread_count = 1  # one thread: the same bytes every time
        stream.options = {"crf": "18", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def is_clip(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP" or data[4:8] == b"ftyp"


def read_frames(data: bytes) -> list:
    """A clip file's frames as (H, W, 3) uint8 arrays."""
    import numpy as np

    if data[4:8] == b"ftyp":
        import av

        with av.open(io.BytesIO(data)) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``parameters`` text and the ``farm`` JSON record a clip file carries."""
    if data[4:8] == b"ftyp":
        import av

        with av.open(io.BytesIO(data)) as container:
            tags = dict(container.metadata)
        return {"parameters": tags.get("comment", ""), "farm": tags.get("description", "")}
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT, b"")
        xmp = image.info.get("xmp", b"")
    parameters = comment[8:].decode("utf-16-be") if isinstance(comment, bytes) else str(comment)
    found = _XMP_RE.search(xmp if isinstance(xmp, bytes) else xmp.encode())
    return {"parameters": parameters, "farm": html.unescape(found.group(1).decode()) if found else ""}


def key_frames(data: bytes) -> list:
    """The first, middle and last frame of a clip, as PIL images (a contact sheet's cell)."""
    from PIL import Image

    frames = read_frames(data)
    picks = [0, len(frames) // 2, len(frames) - 1]
    return [Image.fromarray(frames[i]) for i in picks]
