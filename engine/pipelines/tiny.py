"""Tiny SD1.5-style and SDXL-style pipelines, and a tiny LCM-LoRA for each.

These machines cannot reach a model hub, so tests and the demo use models built here from
configs, deterministically (fixed seeds), and saved with ``save_pretrained``. They are then
loaded through exactly the code real models use (``from_pretrained``, ``load_lora_weights``).

``tiny-sd`` is a teacher that has learned something: its UNet and VAE are trained
(``scripts/train_tiny_teacher.py``, on the generated shapes set of ``engine.training.shapes``:
"a red circle", ...) and their weights are committed under ``engine/weights/tiny-sd`` with their
sha256 sums; its text encoder and tokenizer stay the seeded random ones. The other models keep
random weights.

The VAE has four blocks so it downsamples by 8 like the real one: a 64x64 image has an 8x8
latent, which keeps a 4-step render well under a second on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# The tiny models' native size (the real families use 512 and 1024).
TINY_NATIVE_SIZE = 64
_BUILD_FORMAT = 4  # bump when the builders change, so stale caches are rebuilt (4: tiny-sd is the trained teacher)
# The trained tiny-sd teacher (scripts/train_tiny_teacher.py): UNet and VAE weights, SHA256SUMS.
TINY_SD_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "tiny-sd"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet: every byte maps to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A byte-level CLIP tokenizer with a small vocabulary and a few merges, made from scratch."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("a", "n"), ("o", "n</w>"), ("e", "r</w>")]
    for a, b in merges:
        vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    # transformers 5 builds the BPE model straight from the vocabulary and merges.
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges, pad_token=pad_token,
        model_max_length=77,
    )


def _clip_config(hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512 + 6,
        eos_token_id=512 + 7,
        pad_token_id=512 + 7,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=2,
        layer_norm_eps=1e-5,
        vocab_size=512 + 8,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        hidden_act="gelu",
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # Four blocks: three downsamples, a factor of 8 like the real SD VAE.
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=TINY_NATIVE_SIZE,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # The base model ships a plain scheduler, as real checkpoints do; recipes swap it.
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )


def _tiny_unet(**family_config):
    """A two-block UNet: one downsample, so an 8x8 latent stays cheap."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_NATIVE_SIZE // 8,
        in_channels=4, out_channels=4, norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **family_config,
    )


def tiny_sd_modules(*, seed: int = 0, lcm: bool = False):
    """The SD1.5-style modules with seeded random weights: (unet, vae, text_encoder, tokenizer).
    The teacher's training (engine.training.teacher) starts from these, so the text encoder and
    tokenizer it conditions on are exactly the shipped ones."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = _tiny_unet(cross_attention_dim=32, attention_head_dim=4, **({"time_cond_proj_dim": 32} if lcm else {}))
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_config(32))
    return unet, vae, text_encoder, _clip_tokenizer()


class TeacherWeightsError(RuntimeError):
    """The committed teacher weights are missing or do not match their SHA256SUMS."""


def _verified(weights: Path, name: str) -> Path:
    """``weights/name``, after checking its sha256 against ``weights/SHA256SUMS``."""
    import hashlib

    sums_file, path = weights / "SHA256SUMS", weights / name
    try:
        sums = dict(reversed(line.split(maxsplit=1)) for line in sums_file.read_text().splitlines() if line.strip())
        data = path.read_bytes()
    except OSError as exc:
        raise TeacherWeightsError(f"tiny-sd teacher weights: cannot read {exc.filename}: {exc.strerror}") from None
    expected, actual = sums.get(name), hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise TeacherWeightsError(
            f"tiny-sd teacher weights: {path} has sha256 {actual}, but {sums_file} says {expected}; "
            "restore the committed file or retrain with scripts/train_tiny_teacher.py (which rewrites both)"
        )
    return path


def read_teacher_weights(weights: Path = TINY_SD_WEIGHTS) -> tuple[dict, dict, float]:
    """The trained UNet and VAE state dicts (sha256-checked first) and the VAE's ``scaling_factor``
    (kept in the VAE file's metadata: 1 / std of its latents)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    unet_file, vae_file = _verified(weights, "unet.safetensors"), _verified(weights, "vae.safetensors")
    with safe_open(str(vae_file), framework="pt") as f:
        scaling_factor = float(f.metadata()["scaling_factor"])
    return load_file(str(unet_file)), load_file(str(vae_file)), scaling_factor


def build_tiny_sd(directory: Path, *, seed: int = 0, lcm: bool = False, weights: Path | None = None) -> None:
    """SD1.5-style. ``lcm``: an LCM-distilled-style UNet with a guidance embedding
    (``time_cond_proj_dim``), which the pipeline feeds instead of running CFG. ``weights``: a
    folder of trained UNet and VAE weights (the shipped ``tiny-sd`` uses the committed teacher,
    ``engine/weights/tiny-sd``); the text encoder and tokenizer stay the seeded random ones."""
    from diffusers import StableDiffusionPipeline

    trained = read_teacher_weights(Path(weights)) if weights is not None else None
    unet, vae, text_encoder, tokenizer = tiny_sd_modules(seed=seed, lcm=lcm)
    scheduler = _scheduler()
    if trained is not None:
        unet_state, vae_state, scaling_factor = trained
        unet.load_state_dict(unet_state)
        vae.load_state_dict(vae_state)
        vae.register_to_config(scaling_factor=scaling_factor)
        # SD1.5's own scheduler settings, which DDIM-style schedulers made from this config read:
        # DDIMScheduler's defaults clip x0 to [-1, 1], which suits pixels, not latents
        scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)


def build_tiny_sdxl(directory: Path, *, seed: int = 0, lcm: bool = False, ssd: bool = False) -> None:
    """SDXL-style: two text encoders, pooled embeddings, size/crop conditioning. ``ssd``: the
    SSD-1B layout (same architecture, fewer transformer layers); ``lcm``: a guidance embedding."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # The two text encoders have different widths, as the real ones do (768 and 1280): with equal
    # widths diffusers' from_single_file cannot tell them apart by shape and loads the first
    # encoder's weights into text_encoder_2, leaving its text_projection unloaded (meta).
    width, width_2 = 32, 64
    torch.manual_seed(seed)
    unet = _tiny_unet(
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1) if ssd else (1, 2),
        cross_attention_dim=width + width_2,  # both encoders' hidden states, concatenated
        # 6 size/crop conditioning values x 8 + the pooled text embedding (the second encoder's)
        projection_class_embeddings_input_dim=6 * 8 + width_2,
        **({"time_cond_proj_dim": 32} if lcm else {}),
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_config(width))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(width_2, projection=width_2))
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=_clip_tokenizer(), tokenizer_2=_clip_tokenizer(pad_token="!"), scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)


def build_tiny_lora(model_dir: Path, directory: Path, *, seed: int, rank: int = 4) -> None:
    """A LoRA on the UNet attention projections, saved in the diffusers LoRA format.

    Both LoRA matrices are random (peft's default zero-inits B), so the adapter visibly changes
    the output, as a trained LCM-LoRA or style LoRA would.
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    unet.add_adapter(config)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)  # strong enough to matter, weak enough to keep images finite
    state = get_peft_model_state_dict(unet)
    directory.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=state, weight_name=TINY_LORA_WEIGHT_NAME,
        safe_serialization=True,
    )


def build_tiny_taesd(directory: Path, *, seed: int = 0) -> None:
    """A tiny autoencoder in TAESD's layout (``AutoencoderTiny``): 4 latent channels, three 2x
    upsamples (a factor of 8, like the tiny VAE), saved as ``madebyollin/taesd`` is."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    vae.save_pretrained(str(directory), safe_serialization=True)


_BUILDERS = {
    "tiny-sd": lambda d: build_tiny_sd(d, weights=TINY_SD_WEIGHTS),
    "tiny-sd-lcm": lambda d: build_tiny_sd(d, seed=100, lcm=True),
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-sdxl-lcm": lambda d: build_tiny_sdxl(d, seed=100, lcm=True),
    "tiny-sdxl-turbo": lambda d: build_tiny_sdxl(d, seed=200),
    "tiny-ssd-1b": lambda d: build_tiny_sdxl(d, seed=300, ssd=True),
}


def _build_once(target: Path, build) -> Path:
    """Run ``build(tmp_dir)`` once for ``target``; return ``target``.

    The build goes to a temporary sibling and is renamed into place, so concurrent workers and an
    interrupted build never leave a half-written model behind.
    """
    marker = target / "farm-build.json"
    if marker.exists() and json.loads(marker.read_text()).get("format") == _BUILD_FORMAT:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        Path(tmp, "farm-build.json").write_text(json.dumps({"format": _BUILD_FORMAT}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not marker.exists():  # a stale build sits there: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_model(name: str, cache_dir: Path) -> Path:
    """Build the named tiny model into ``cache_dir`` once; return its directory."""
    return _build_once(Path(cache_dir) / name, _BUILDERS[name])


def ensure_tiny_taesd(name: str, cache_dir: Path, *, seed: int) -> Path:
    """Build a tiny TAESD-style decoder once; return its directory."""
    return _build_once(Path(cache_dir) / name, lambda tmp: build_tiny_taesd(tmp, seed=seed))


def ensure_tiny_lora(model_name: str, lora_name: str, cache_dir: Path, *, seed: int) -> Path:
    """Build a tiny LoRA for a tiny model once; return its directory."""
    model_dir = ensure_tiny_model(model_name, cache_dir)
    return _build_once(
        Path(cache_dir) / lora_name, lambda tmp: build_tiny_lora(model_dir, tmp, seed=seed)
    )
