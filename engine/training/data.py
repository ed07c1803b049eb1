"""A distillation's data, streamed: examples read as training reaches them (from a list, or from
the farm's store through ``workers.training``), resized and centre-cropped to the training
resolution as diffusers' scripts do, encoded by the VAE and the text encoders batch by batch (as
the scripts do, so memory does not grow with the dataset), latents sampled from the VAE's
distributions, and the data order: a pure function of the seed and the position, so a resumed run
draws the same examples."""

from __future__ import annotations

import copy
from typing import Protocol, Sequence

from engine.training.settings import SDXL_FAMILIES, DataError

ENCODE_CHUNK = 32  # --vae_encode_batch_size; also the text encoder's chunk
ENCODE_PIXELS = 1 << 22  # at most this many pixels per VAE call (4 images at 1024 px, 16 at 512)


class Examples(Protocol):
    """Captioned images, read one at a time: ``image(i)`` is a uint8 HxWx3 array of any size."""

    def __len__(self) -> int: ...

    def caption(self, index: int) -> str: ...

    def image(self, index: int): ...


class InMemory:
    """A list of (image, caption) pairs as ``Examples``."""

    def __init__(self, pairs: Sequence):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def caption(self, index: int) -> str:
        caption = self.pairs[index][1]
        if not isinstance(caption, str):
            raise DataError(f"example {index}: the caption is a {type(caption).__name__}, not a str")
        return caption

    def image(self, index: int):
        return self.pairs[index][0]


def as_examples(examples) -> Examples:
    return InMemory(examples) if isinstance(examples, (list, tuple)) else examples


def prepare(index: int, image, resolution: int):
    """The example at ``resolution`` x ``resolution``: its shorter side resized to ``resolution``
    (bilinear, as the scripts' ``transforms.Resize``), then centre-cropped. Returns (uint8 array,
    original (height, width), crop (top, left)): SDXL is conditioned on both."""
    import numpy as np
    from PIL import Image

    dims = getattr(image, "shape", None)
    if dims is None or len(dims) != 3 or dims[2] != 3 or str(getattr(image, "dtype", "")) != "uint8":
        raise DataError(f"example {index}: the image must be a uint8 HxWx3 array")
    height, width = int(dims[0]), int(dims[1])
    if min(height, width) < 1:
        raise DataError(f"example {index}: the image is empty ({width}x{height})")
    if min(height, width) != resolution:
        scale = resolution / min(height, width)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BILINEAR))
    top = int(round((image.shape[0] - resolution) / 2.0))
    left = int(round((image.shape[1] - resolution) / 2.0))
    return image[top:top + resolution, left:left + resolution], (height, width), (top, left)


def training_vae(pipe, family: str):
    """The VAE that encodes training images: the pipeline's, or an fp32 copy of it where its own
    runs in fp16 and must not (SDXL's VAE overflows in fp16: ``force_upcast``, as rendering does)."""
    import torch

    vae = pipe.vae
    if vae.dtype == torch.float16 and (getattr(vae.config, "force_upcast", False) or family in SDXL_FAMILIES):
        vae = copy.deepcopy(vae).to(torch.float32)
    return vae


def encode_captions(pipe, family: str, captions: list[str], device, *, uncond: bool = True) -> dict:
    """Caption embeddings on the CPU, in chunks: {"prompt_embeds", "pooled" (SDXL)} for ``captions``
    and (with ``uncond``) the unconditional row (the script's: "" for SD1.5, zeros for SDXL)."""
    import torch

    out: dict[str, list] = {"prompt_embeds": [], "pooled": []}
    with torch.no_grad():
        for start in range(0, len(captions), ENCODE_CHUNK):
            chunk = captions[start:start + ENCODE_CHUNK]
            if family in SDXL_FAMILIES:
                embeds, _, pooled, _ = pipe.encode_prompt(chunk, device=device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=False)
                out["pooled"].append(pooled.float().cpu())
            else:
                embeds, _ = pipe.encode_prompt(chunk, device, 1, False)
            out["prompt_embeds"].append(embeds.float().cpu())
        empty, empty_pooled = None, None
        if uncond and family in SDXL_FAMILIES:
            empty = torch.zeros_like(out["prompt_embeds"][0][:1])
            empty_pooled = torch.zeros_like(out["pooled"][0][:1])
        elif uncond:
            empty, _ = pipe.encode_prompt([""], device, 1, False)
            empty = empty.float().cpu()
    return {"prompt_embeds": torch.cat(out["prompt_embeds"]),
            "pooled": torch.cat(out["pooled"]) if out["pooled"] else None,
            "uncond": empty, "uncond_pooled": empty_pooled}


def encode_images(vae, images, device):
    """The VAE's latent distributions (mean, std) of uint8 HxWx3 images of one size, on the CPU, in
    chunks of a size that depends on the image size alone."""
    import numpy as np
    import torch

    height, width = images[0].shape[:2]
    size = max(1, min(ENCODE_CHUNK, ENCODE_PIXELS // (height * width)))  # a function of the size alone
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(images), size):
            chunk = np.stack(images[start:start + size])
            pixels = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def latents_from(vae, mean, std, generator):
    """A sample of the latent distribution, normalised as the pipeline's latents are."""
    import torch

    z = mean + std * torch.randn(mean.shape, generator=generator)
    config = vae.config
    lmean, lstd = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if lmean is not None and lstd is not None:  # the inverse of engine.pipelines.sdxl.decode
        lmean = torch.tensor(lmean).view(1, -1, 1, 1)
        lstd = torch.tensor(lstd).view(1, -1, 1, 1)
        return (z - lmean) * config.scaling_factor / lstd
    return z * config.scaling_factor


def data_indices(seed: int, n: int, start: int, count: int) -> list[int]:
    """Example indices for positions ``start .. start+count`` of the data stream: each epoch is a
    permutation of the ``n`` examples drawn from (seed, epoch) alone, so any position is known
    without replaying the stream (what a resumed run needs)."""
    import torch

    out: list[int] = []
    position = start
    cache: dict[int, list[int]] = {}
    while len(out) < count:
        epoch, offset = divmod(position, n)
        if epoch not in cache:
            g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
            cache[epoch] = torch.randperm(n, generator=g).tolist()
        take = min(count - len(out), n - offset)
        out.extend(cache[epoch][offset:offset + take])
        position += take
    return out
