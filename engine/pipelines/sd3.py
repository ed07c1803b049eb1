"""The SD3 family: ``StableDiffusion3Pipeline`` (SD3.5 Large Turbo; 1024x1024 native).

An MMDiT transformer (SD3.5 Large: 38 blocks, 8B parameters) with three text encoders: CLIP
ViT-L and OpenCLIP ViT-bigG (both with projections: their pooled outputs, concatenated, and their
token sequences, padded to T5's width) and T5-XXL (``max_sequence_length`` tokens, 256). Latents
have 16 channels and the transformer takes 2x2 patches, so sides are multiples of 16 (refused at
submit, farm.jobs.spec; the pipeline would raise). The VAE needs ``shift_factor``.

SD3 runs classifier-free guidance when guidance > 1, like the SD families; SD3.5 Large Turbo is
distilled to run without it (guidance 0, recipe ``sd35-turbo``).

Memory: as for FLUX (engine/pipelines/flux.py), T5-XXL is the largest part after the
transformer; ``FARM_OFFLOAD=model`` keeps it in host RAM while the transformer runs, and the
family defaults to bf16 on CUDA (``FARM_DTYPE=auto``).
"""

from __future__ import annotations

from engine.pipelines.flux import check_vae

FAMILIES = ("sd3",)
CUDA_DTYPE = "bf16"  # what FARM_DTYPE=auto picks on CUDA (engine.runner)
DEFAULT_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's own default


def load(location: str, *, single_file: bool, revision: str | None, dtype, cache_dir: str | None,
         arch: str = "sd3", model_cache: str | None = None):
    """A diffusers directory or hub id (single-file SD3 checkpoints are refused)."""
    from diffusers import StableDiffusion3Pipeline

    if single_file:
        from farm.errors import InputError

        raise InputError("model", f"{location}: SD3 models load from a diffusers directory or hub id, "
                                  "not from one file")
    pipe = StableDiffusion3Pipeline.from_pretrained(location, revision=revision, cache_dir=cache_dir,
                                                    use_safetensors=True, dtype=dtype)
    check_vae(pipe, "sd3")
    return pipe


def max_sequence_length(spec) -> int:
    """T5 tokens per prompt: the recipe's (sd35-turbo: 256), else the family's default."""
    from farm.models.recipes import pipeline_option

    return int(pipeline_option(spec.recipe, "max_sequence_length", DEFAULT_MAX_SEQUENCE_LENGTH))


def prepare(pipe, spec) -> dict:
    """What one pipeline call needs beyond the shared arguments (engine.runner.family_call): CFG
    when guidance > 1 (the pipeline's own rule), T5's sequence length."""
    return {"guided": spec.guidance > 1.0, "encode": {"max_sequence_length": max_sequence_length(spec)},
            "call": {}, "decode": {}}


def encode(pipe, prompts: list[str], negatives: list[str], cfg: bool, *,
           max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH) -> dict:
    """Sequence and pooled embeddings (three encoders) for each prompt, and for each negative
    prompt when ``cfg``, in one call of each encoder."""
    positive, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompts, None, None, device=pipe._execution_device, num_images_per_prompt=1,
        do_classifier_free_guidance=cfg, negative_prompt=negatives if cfg else None,
        max_sequence_length=max_sequence_length,
    )
    embeds = {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}
    if cfg:
        embeds["negative_prompt_embeds"] = negative
        embeds["negative_pooled_prompt_embeds"] = negative_pooled
    return embeds


def decode(pipe, latents, vae=None):
    """Latents to images in [-1, 1], NCHW: ``z / scaling_factor + shift_factor``, as the pipeline
    decodes them (a tiny autoencoder, TAESD3, has scaling 1 and shift 0)."""
    vae = pipe.vae if vae is None else vae
    config = vae.config
    latents = (latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)).to(vae.dtype)
    return vae.decode(latents, return_dict=False)[0]
