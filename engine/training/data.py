"""The frozen inputs of a distillation: caption embeddings and the VAE's latent distributions,
computed once in fixed chunks, latents sampled from them, and the data order (a pure function of
the seed and the position, so a resumed run draws the same examples)."""

from __future__ import annotations

from engine.training.settings import SDXL_FAMILIES

ENCODE_CHUNK = 32  # --vae_encode_batch_size; also the text encoder's chunk
ENCODE_PIXELS = 1 << 22  # at most this many pixels per VAE call (4 images at 1024 px, 16 at 512)


def encode_captions(pipe, family: str, captions: list[str], device) -> dict:
    """Caption embeddings on the CPU, in chunks: {"prompt_embeds", "pooled" (SDXL)} for ``captions``
    and the unconditional row (the script's: "" for SD1.5, zeros for SDXL)."""
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
        if family in SDXL_FAMILIES:
            uncond = torch.zeros_like(out["prompt_embeds"][0][:1])
            uncond_pooled = torch.zeros_like(out["pooled"][0][:1])
        else:
            uncond, _ = pipe.encode_prompt([""], device, 1, False)
            uncond, uncond_pooled = uncond.float().cpu(), None
    return {"prompt_embeds": torch.cat(out["prompt_embeds"]),
            "pooled": torch.cat(out["pooled"]) if out["pooled"] else None,
            "uncond": uncond, "uncond_pooled": uncond_pooled}


def encode_images(pipe, images, device):
    """The VAE's latent distributions (mean, std) of uint8 HxWx3 images, on the CPU, in chunks."""
    import numpy as np
    import torch

    vae = pipe.vae
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


def latents_from(pipe, mean, std, generator):
    """A sample of the latent distribution, normalised as the pipeline's latents are."""
    import torch

    z = mean + std * torch.randn(mean.shape, generator=generator)
    config = pipe.vae.config
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
