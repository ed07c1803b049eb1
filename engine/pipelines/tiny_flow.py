"""Tiny random-weight FLUX-style and SD3-style pipelines, their LoRAs and preview decoders.

The flow-matching families (``engine.pipelines.flux``, ``engine.pipelines.sd3``) built small from
configs, offline and deterministically, then saved with ``save_pretrained`` and loaded through the
same ``from_pretrained`` / ``load_lora_weights`` code as FLUX.1-schnell and SD3.5 Large Turbo:

- ``tiny-flux``: FLUX.1-schnell's layout (no guidance embedding, a FlowMatchEuler scheduler
  without dynamic shifting), CLIP + T5, 16 latent channels packed into 2x2 patches;
  ``tiny-flux-dev``: FLUX.1-dev's (a guidance embedding, dynamic shifting), the same layers
  otherwise, so LoRAs of the ``tiny-flux`` arch fit both, as FLUX.1-dev LoRAs fit schnell.
- ``tiny-sd3``: SD3.5 Large's layout (MMDiT with RMS q/k norms, two CLIPs with projections and
  T5, 16 latent channels, 2x2 patches).

The T5 tokenizer is a Unigram model made here from a small vocabulary (lowercase letters and
digits with and without the word-start marker, a few whole words); no sentencepiece file and no
download. The VAE has four blocks, so it downsamples by 8 as the real ones do: a 64x64 image is an
8x8x16 latent (16 tokens after FLUX's packing). ``shift_factor`` is set (0.0): the pipelines add it
at decode and fail on None.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from engine.pipelines.tiny import TINY_LORA_WEIGHT_NAME, TINY_NATIVE_SIZE, _build_once, _clip_config, _clip_tokenizer

LATENT_CHANNELS = 16  # FLUX's and SD3's VAE
T5_WORDS = ("a", "an", "the", "at", "of", "in", "on", "and", "with", "lighthouse", "dusk", "red", "fox", "snow",
            "robot", "toy", "harbour", "night", "portrait", "fog", "blurry")


def t5_tokenizer(max_length: int = 512):
    """A T5 (Unigram, SentencePiece-style) tokenizer from a tiny vocabulary: ``<pad>`` 0, ``</s>``
    1, ``<unk>`` 2, then pieces; every prompt ends with ``</s>``, unknown characters map to
    ``<unk>``. Built with the ``tokenizers`` library through transformers' ``T5Tokenizer``."""
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for c in string.ascii_lowercase + string.ascii_uppercase + string.digits + ",.-'":
        vocab += [("▁" + c, -4.0), (c, -5.0)]
    vocab += [("▁" + word, -1.0) for word in T5_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _t5_encoder(vocab_size: int, width: int):
    """T5 v1.1's encoder (gated GELU feed-forward, relative position buckets), two layers."""
    from transformers import T5Config, T5EncoderModel

    config: dict[str, Any] = {"vocab_size": vocab_size, "d_model": width, "d_kv": 8, "d_ff": width * 2, "num_layers": 2,
              "num_heads": width // 8, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
              "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1,
              "decoder_start_token_id": 0, "tie_word_embeddings": False}
    return T5EncoderModel(T5Config(**config))


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    # four blocks: a factor of 8 like the real VAE; no quant convs, as FLUX's and SD3's VAEs have none
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=8, sample_size=TINY_NATIVE_SIZE,
        scaling_factor=scaling_factor, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False,
    )


def build_tiny_flux(directory: Path, *, seed: int = 0, dev: bool = False) -> None:
    """FLUX.1-schnell's layout (``dev``: FLUX.1-dev's guidance embedding and shifting)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    width = 32
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=width, pooled_projection_dim=width, guidance_embeds=dev,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    vae = _vae(scaling_factor=0.3611)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_config(width))
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed + 3)
    text_encoder_2 = _t5_encoder(len(tokenizer_2), width)
    if dev:  # FLUX.1-dev's scheduler config: resolution-dependent shift
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:  # FLUX.1-schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=_clip_tokenizer(),
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(str(directory), safe_serialization=True)


def build_tiny_sd3(directory: Path, *, seed: int = 0) -> None:
    """SD3.5 Large's layout: MMDiT with RMS-normed queries and keys, two CLIPs with projections
    (their widths differ, as 768 and 1280 do) and T5 at least as wide as both CLIPs together."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    width, width_2, t5_width = 32, 64, 128
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_NATIVE_SIZE // 8, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=t5_width,
        caption_projection_dim=32, pooled_projection_dim=width + width_2, pos_embed_max_size=128, qk_norm="rms_norm",
    )
    torch.manual_seed(seed + 1)
    vae = _vae(scaling_factor=1.5305)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModelWithProjection(_clip_config(width, projection=width))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(width_2, projection=width_2))
    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(seed + 4)
    text_encoder_3 = _t5_encoder(len(tokenizer_3), t5_width)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=_clip_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=_clip_tokenizer(pad_token="!"), text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)


# the transformer layers the tiny LoRAs adapt: image and text stream attention projections (FLUX's
# single blocks have only the image-stream names), as Hyper-SD's and most style LoRAs do
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def build_tiny_lora(model_dir: Path, directory: Path, *, seed: int, rank: int = 4) -> None:
    """A LoRA on the transformer's attention projections in the diffusers layout
    (``transformer.<module>.lora_A.weight``), both matrices random, as for the UNet families."""
    import json

    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    flux = json.loads((model_dir / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    Pipeline = FluxPipeline if flux else StableDiffusion3Pipeline
    Transformer = FluxTransformer2DModel if flux else SD3Transformer2DModel
    transformer = Transformer.from_pretrained(str(model_dir), subfolder="transformer")
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)  # strong enough to matter, weak enough to keep images finite
    directory.mkdir(parents=True, exist_ok=True)
    Pipeline.save_lora_weights(str(directory), transformer_lora_layers=get_peft_model_state_dict(transformer),
                               weight_name=TINY_LORA_WEIGHT_NAME, safe_serialization=True)


def build_tiny_taesd(directory: Path, *, seed: int = 0) -> None:
    """A tiny autoencoder in TAEF1's / TAESD3's layout: 16 latent channels, a factor of 8."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                          latent_channels=LATENT_CHANNELS)
    vae.save_pretrained(str(directory), safe_serialization=True)


BUILDERS = {
    "tiny-flux": lambda d: build_tiny_flux(d, seed=400),
    "tiny-flux-dev": lambda d: build_tiny_flux(d, seed=500, dev=True),
    "tiny-sd3": lambda d: build_tiny_sd3(d, seed=600),
}


def ensure_tiny_model(name: str, cache_dir: Path) -> Path:
    return _build_once(Path(cache_dir) / name, BUILDERS[name])


def ensure_tiny_lora(model_name: str, lora_name: str, cache_dir: Path, *, seed: int) -> Path:
    model_dir = ensure_tiny_model(model_name, cache_dir)
    return _build_once(Path(cache_dir) / lora_name, lambda tmp: build_tiny_lora(model_dir, tmp, seed=seed))


def ensure_tiny_taesd(name: str, cache_dir: Path, *, seed: int) -> Path:
    return _build_once(Path(cache_dir) / name, lambda tmp: build_tiny_taesd(tmp, seed=seed))
