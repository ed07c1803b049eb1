"""The SD1.5 family: ``StableDiffusionPipeline`` (512x512 native, one CLIP text encoder)."""

from __future__ import annotations

FAMILIES = ("sd15",)


def load(location: str, *, single_file: bool, revision: str | None, dtype, cache_dir: str | None,
         arch: str = "sd15", model_cache: str | None = None):
    """A diffusers directory or hub id; or a single-file checkpoint, with ``arch``'s local config
    (``model_cache`` holds a tiny arch's, engine.pipelines.single_file)."""
    from diffusers import StableDiffusionPipeline

    kwargs = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if single_file:
        from engine.pipelines import single_file as files

        # the real SD1.5 config names a feature extractor, which only the safety checker uses
        return files.load(StableDiffusionPipeline, location, arch=arch, model_cache=model_cache,
                          feature_extractor=None, **kwargs)
    return StableDiffusionPipeline.from_pretrained(
        location, revision=revision, cache_dir=cache_dir, use_safetensors=True, **kwargs
    )


def encode(pipe, prompts: list[str], negatives: list[str], cfg: bool) -> dict:
    """Text embeddings for each prompt, in one text-encoder call."""
    positive, negative = pipe.encode_prompt(
        prompts, pipe._execution_device, 1, cfg, negative_prompt=negatives if cfg else None
    )
    embeds = {"prompt_embeds": positive}
    if cfg:
        embeds["negative_prompt_embeds"] = negative
    return embeds


def decode(pipe, latents, vae=None):
    """Latents to images in [-1, 1], NCHW, as the pipeline decodes them (with its own VAE, or
    ``vae``: a tiny autoencoder, whose scaling factor is 1)."""
    vae = pipe.vae if vae is None else vae
    latents = latents.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(latents, return_dict=False)[0]


# -- issue 13: the image kinds, on the resident pipeline's own modules ---------------------------
def for_kind(pipe, kind: str, controlnet=None):
    """The pipeline of an image kind (img2img, inpaint, controlnet, upscale: an img2img pass) made
    of ``pipe``'s components: the same modules, so adapters loaded into them stay loaded."""
    from diffusers import (
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
    )

    from engine.kinds import from_components

    classes = {"img2img": StableDiffusionImg2ImgPipeline, "upscale": StableDiffusionImg2ImgPipeline,
               "inpaint": StableDiffusionInpaintPipeline, "controlnet": StableDiffusionControlNetPipeline}
    return from_components(classes[kind], pipe, **({"controlnet": controlnet} if kind == "controlnet" else {}))
