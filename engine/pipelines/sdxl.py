"""The SDXL family, SSD-1B included: ``StableDiffusionXLPipeline`` (1024x1024 native, two CLIP
text encoders, pooled embeddings and size/crop conditioning)."""

from __future__ import annotations

FAMILIES = ("sdxl", "ssd-1b")


def load(location: str, *, single_file: bool, revision: str | None, dtype, cache_dir: str | None,
         arch: str = "sdxl", model_cache: str | None = None):
    """A diffusers directory or hub id; or a single-file checkpoint, with ``arch``'s local config
    (``model_cache`` holds a tiny arch's, engine.pipelines.single_file)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    kwargs = {"dtype": dtype, "add_watermarker": False}
    if single_file:
        from engine.pipelines import single_file as files

        pipe = files.load(StableDiffusionXLPipeline, location, arch=arch, model_cache=model_cache,
                          **kwargs)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(
            location, revision=revision, cache_dir=cache_dir, use_safetensors=True, **kwargs
        )
    if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
        # The SDXL VAE overflows in fp16. Keep it in fp32 once instead of casting it back and
        # forth on every decode as the pipeline does.
        pipe.vae.to(torch.float32)
    return pipe


def encode(pipe, prompts: list[str], negatives: list[str], cfg: bool) -> dict:
    """Text embeddings (sequence and pooled, both encoders) for each prompt, in one call."""
    positive, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompts, device=pipe._execution_device, num_images_per_prompt=1,
        do_classifier_free_guidance=cfg, negative_prompt=negatives if cfg else None,
    )
    embeds = {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}
    if cfg:
        embeds["negative_prompt_embeds"] = negative
        embeds["negative_pooled_prompt_embeds"] = negative_pooled
    return embeds


def decode(pipe, latents, vae=None):
    """Latents to images in [-1, 1], NCHW, with the SDXL VAE's latent normalisation (or through
    ``vae``: a tiny autoencoder, which takes the latents as they are)."""
    import torch

    vae = pipe.vae if vae is None else vae
    latents = latents.to(vae.dtype)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    return vae.decode(latents, return_dict=False)[0]


# -- issue 13: the image kinds, on the resident pipeline's own modules ---------------------------
def for_kind(pipe, kind: str, controlnet=None):
    """The SDXL pipeline of an image kind made of ``pipe``'s components (adapters stay loaded; the
    VAE stays in the dtype ``load`` chose)."""
    from diffusers import (
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
    )

    from engine.kinds import from_components

    classes = {"img2img": StableDiffusionXLImg2ImgPipeline, "upscale": StableDiffusionXLImg2ImgPipeline,
               "inpaint": StableDiffusionXLInpaintPipeline, "controlnet": StableDiffusionXLControlNetPipeline}
    return from_components(classes[kind], pipe, add_watermarker=False,
                           **({"controlnet": controlnet} if kind == "controlnet" else {}))
