"""The options that describe jobs, shared by `farm submit` and `farm run`."""

from __future__ import annotations

import functools

import click

from farm.jobs.clips import FORMATS, MAX_FRAMES, MIN_FRAMES
from farm.jobs.kinds import IMAGE_KINDS, PREPROCESSORS

KIND_CHOICES = ("txt2img",) + IMAGE_KINDS + ("clip",)  # farm.jobs.spec.KINDS (issues 13, 27)


def job_options(func):
    """The options that describe jobs, shared by ``run`` and ``submit``. Values with a range
    (``1-8``) or a comma list (``1,1.5,2``) are sweep axes, crossed with each other."""
    options = [
        click.option("--variants", "-n", type=int, default=1, show_default=True,
                     help="Images per prompt, with seeds S, S+1, ..."),
        click.option("--seed", type=int, default=None, help="Base seed S (default: drawn at random and recorded)."),
        click.option("--seeds", default=None, help="Seed axis: 0-15 or 1,5,9 (instead of --variants)."),
        click.option("--model", default=None, help="Model name (default: FARM_DEFAULT_MODEL or tiny-sd)."),
        click.option("--recipe", default=None, help="Few-step recipe (default lcm-lora; see `farm recipes list`)."),
        click.option("--steps", default=None, help="Denoising steps, or an axis: 1-8, 2,4,8."),
        click.option("--guidance", default=None, help="Guidance scale, or an axis: 1,1.5,2."),
        click.option("--size", default=None, help="WIDTHxHEIGHT, or an axis: 512x512,768x512."),
        click.option("--negative", default=None, help="Negative prompt (ignored when guidance <= 1)."),
        click.option("--decoder", type=click.Choice(["full", "tiny"]), default=None,
                     help="full: the model's VAE (default); tiny: TAESD, a much cheaper decoder for previews."),
        click.option("--accelerator", default=None, metavar="NAME",
                     help="The recipe's accelerator LoRA by name, e.g. one made with `farm distill` "
                          "(default: the model's own, else the arch's)."),
        click.option("--adapter", "adapters", multiple=True, metavar="NAME[:WEIGHT[,WEIGHT...]]",
                     help="A style LoRA on top of the recipe's accelerator; several weights sweep it. Repeatable."),
        click.option("--spec", "spec", default=None, help="Sweep spec (.yaml or .json): prompts, axes, wildcards."),
        click.option("--wildcards", "wildcards", default=None,
                     help="Directory of __name__ lists (NAME.txt, one entry per line)."),
        click.option("--wildcard-mode", type=click.Choice(["combinatorial", "random"]), default=None,
                     help="Expand {a|b} and __name__ into every combination, or pick at random (seeded)."),
        click.option("--wildcard-count", type=int, default=None, help="Random mode: prompts per template."),
        # issue 13: jobs that start from images (farm.jobs.kinds); an image is a path, s3://BUCKET/KEY or job:ID
        click.option("--kind", type=click.Choice(KIND_CHOICES), default=None,
                     help="What the jobs do (default: what the image options imply, else txt2img)."),
        click.option("--init-image", "init_image", multiple=True, metavar="IMAGE",
                     help="img2img/inpaint/upscale source: a path, s3:// URI or job:ID; repeat for an axis."),
        click.option("--mask", "mask_image", default=None, metavar="IMAGE",
                     help="Inpaint mask, the init image's size: white is repainted, black kept."),
        click.option("--mask-blur", "mask_blur", default=None, metavar="N",
                     help="Inpaint: blur the mask's edge by N pixels."),
        click.option("--strength", default=None, metavar="S",
                     help="0 < s <= 1: how far the init image is noised (int(steps x s) steps run); or an axis."),
        click.option("--control-image", "control_image", multiple=True, metavar="IMAGE",
                     help="ControlNet input (edges, depth, pose): a path, s3:// URI or job:ID; repeat for an axis."),
        click.option("--controlnet", default=None, metavar="NAME", help="A ControlNet of the model's arch "
                     "(see `farm controlnets list`)."),
        click.option("--control-scale", "control_scale", default=None, metavar="W",
                     help="ControlNet weight, 0..2 (default 1), or an axis: 0.5,1."),
        click.option("--control-preprocess", "control_preprocess", type=click.Choice(PREPROCESSORS), default=None,
                     help="Compute the control image at submission (canny: edges, thresholds 100/200)."),
        click.option("--scale", "upscale", default=None, metavar="F",
                     help="Upscale (hires pass): the factor, 1 < F <= 4 (e.g. 1.5, 2)."),
        # issue 27: clips (farm.jobs.clips), AnimateDiff on the SD1.5 family
        click.option("--frames", default=None, metavar="N",
                     help=f"A clip of N frames, {MIN_FRAMES}..{MAX_FRAMES} (default 16; implies --kind clip); or an axis."),
        click.option("--fps", default=None, metavar="N", help="A clip's frames per second (default 8)."),
        click.option("--motion", default=None, metavar="NAME",
                     help="A clip's motion module (see `farm motion list`; default: the model arch's for the recipe)."),
        click.option("--video-format", "video_format", type=click.Choice(FORMATS), default=None,
                     help="A clip's file: webp (animated, the default) or mp4 (H.264)."),
        click.option("--from-batch", "from_batch", default=None, metavar="BATCH",
                     help="Every succeeded image of BATCH as an init image (crossed with the other axes)."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)
