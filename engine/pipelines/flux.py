"""The FLUX family: ``FluxPipeline`` (FLUX.1-schnell, FLUX.1-dev; 1024x1024 native).

A rectified-flow transformer (19 double-stream and 38 single-stream blocks, 12B parameters) with
two text encoders: CLIP ViT-L (only its pooled output) and T5-XXL (the token sequence,
``max_sequence_length`` tokens: 256 for schnell, 512 for dev, set by the recipe). Latents have 16
channels and are packed into 2x2 patches, so sides are multiples of 16 (refused otherwise at
submit, farm.jobs.spec, instead of the pipeline rounding them down). The VAE needs ``shift_factor``.

FLUX runs no classifier-free guidance: schnell has no guidance at all, dev feeds its distilled
guidance (``guidance_scale``, ~3.5) to a guidance embedding. So a call is never doubled for CFG
and negative prompts are not encoded (farm.models.recipes warns that they are ignored).

Memory: T5-XXL (4.7B parameters, 9.5 GB in bf16) is the largest part after the transformer and
runs once per distinct prompt. On a card that cannot hold both, ``FARM_OFFLOAD=model`` moves each
component to the GPU only while it runs (the T5 sits in host RAM while the transformer denoises);
for a fleet, text encoding can also run apart (on another GPU, or on the CPU) since the runner
passes the transformer embeddings, not prompts. The family defaults to bf16 on CUDA
(``FARM_DTYPE=auto``): the checkpoints are published in bf16, and T5's activations overflow fp16.
"""

from __future__ import annotations

FAMILIES = ("flux",)
CUDA_DTYPE = "bf16"  # what FARM_DTYPE=auto picks on CUDA (engine.runner)
DEFAULT_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's own default (FLUX.1-dev); schnell's recipe says 256


def check_vae(pipe, family: str) -> None:
    """The flow families' VAEs take latents as ``z / scaling_factor + shift_factor``: a VAE
    config without a shift factor (an SD VAE, an old export) fails at decode; refuse it at load."""
    if getattr(pipe.vae.config, "shift_factor", None) is None:
        from farm.errors import InputError

        raise InputError("model", f"the {family} pipeline's VAE has no shift_factor in its config "
                                  "(vae/config.json); FLUX's is 0.1159, SD3's 0.0609")


def load(location: str, *, single_file: bool, revision: str | None, dtype, cache_dir: str | None,
         arch: str = "flux", model_cache: str | None = None):
    """A diffusers directory or hub id (single-file FLUX checkpoints are refused: their text
    encoders and VAE are separate downloads)."""
    from diffusers import FluxPipeline

    if single_file:
        from farm.errors import InputError

        raise InputError("model", f"{location}: FLUX models load from a diffusers directory or hub id "
                                  "(transformer, vae, text_encoder, text_encoder_2), not from one file")
    pipe = FluxPipeline.from_pretrained(location, revision=revision, cache_dir=cache_dir, use_safetensors=True,
                                        dtype=dtype)
    check_vae(pipe, "flux")
    return pipe


def max_sequence_length(spec) -> int:
    """T5 tokens per prompt: the recipe's (schnell: 256), else the family's default."""
    from farm.models.recipes import pipeline_option

    return int(pipeline_option(spec.recipe, "max_sequence_length", DEFAULT_MAX_SEQUENCE_LENGTH))


def prepare(pipe, spec) -> dict:
    """What one pipeline call of ``spec``'s micro-batch needs beyond the shared arguments
    (engine.runner.family_call): no CFG, T5's sequence length, and the size to unpack latents."""
    return {"guided": False, "encode": {"max_sequence_length": max_sequence_length(spec)}, "call": {},
            "decode": {"height": spec.height, "width": spec.width}}


def encode(pipe, prompts: list[str], negatives: list[str], cfg: bool, *,
           max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH) -> dict:
    """T5 sequence embeddings and CLIP pooled embeddings for each prompt, in one call of each
    encoder. ``negatives`` and ``cfg`` are there for the shared signature: FLUX runs no CFG."""
    positive, pooled, _text_ids = pipe.encode_prompt(
        prompts, prompt_2=None, device=pipe._execution_device, num_images_per_prompt=1,
        max_sequence_length=max_sequence_length,
    )
    return {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}


def decode(pipe, latents, vae=None, *, height: int, width: int):
    """Packed latents ([batch, tokens, 64]) to images in [-1, 1], NCHW, as the pipeline decodes
    them: unpacked, then ``z / scaling_factor + shift_factor`` (a tiny autoencoder, TAEF1, has
    scaling 1 and shift 0: it takes the unpacked latents as they are)."""
    vae = pipe.vae if vae is None else vae
    latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    config = vae.config
    latents = (latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)).to(vae.dtype)
    return vae.decode(latents, return_dict=False)[0]
