"""Train the built-in tiny SD1.5-style model (``tiny-sd``) into a teacher that has learned something.

With random weights a 50-step sampler returns the input noise scaled, so no sampler or distillation
can be judged on it. Here, on the generated shapes set (``engine.training.shapes``):

1. the tiny VAE (``engine.pipelines.tiny._tiny_vae``, unchanged) is trained as an autoencoder:
   reconstruction MSE plus a small KL term, the decoder fed posterior samples;
2. its ``scaling_factor`` is set to 1 / std of the posterior samples of the training images, so the
   UNet sees unit-variance latents, as SD's 0.18215 does for the real VAE;
3. the tiny UNet (``_tiny_unet`` as ``build_tiny_sd`` makes it) is trained to predict the noise
   (epsilon) on the DDPM schedule of the pipeline's scheduler (scaled_linear, 0.00085..0.012, 1000
   steps), conditioned on the frozen random CLIP text encoder ``build_tiny_sd`` creates (same
   seeds: the tokenizer and text encoder do not change), with captions dropped to "" 10% of the
   time so classifier-free guidance works. Min-SNR-5 loss weighting; an EMA of the weights is
   what gets saved.

Seeded throughout (torch and numpy); run by ``scripts/train_tiny_teacher.py``, never at render time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.training import shapes

UNET_FILE = "unet.safetensors"
VAE_FILE = "vae.safetensors"
SUMS_FILE = "SHA256SUMS"
REPORT_FILE = "training.json"


@dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 2
    images: int = 6000  # the generated training set (VAE and UNet see the same images)
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 5e-3
    logvar_init: float = -6.0  # added to the initial log-variance of the VAE's posterior
    kl_weight: float = 1e-7  # on diffusers' KL (a sum over the 256 latent values), against a mean MSE
    unet_steps: int = 2500
    batch: int = 64
    unet_lr: float = 2e-3
    warmup: int = 50
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    log_every: int = 100
    dtype: str = "float16"  # of the saved weights


def images_to_tensor(images: list[np.ndarray]):
    """uint8 HxWx3 images -> float NCHW in [-1, 1], as the SD pipelines' VAE expects."""
    import torch

    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NxHxWx3."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(0, 2, 3, 1).cpu().numpy()


def encode_captions(tokenizer, text_encoder, captions: list[str]):
    """The prompt embeddings the SD pipeline computes (``encode_prompt``, no clip skip): padded to
    the tokenizer's length, last hidden state."""
    import torch

    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def _cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, pixels, config: TrainConfig, generator, log: Callable[[str], None]) -> dict:
    """Autoencoder training on ``pixels`` (NCHW in [-1, 1]); returns the final losses."""
    import torch

    # Start the posterior narrow (std ~e^-3): from diffusers' init (std ~1) the decoder sees mostly
    # noise, and the reconstruction gradient shrinks the variance only slowly.
    with torch.no_grad():
        latent_channels = vae.config.latent_channels
        vae.quant_conv.bias[latent_channels:] += config.logvar_init
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.vae_steps, config.warmup, floor=0.05))
    recent: list[tuple[float, float]] = []
    start = time.perf_counter()
    for step in range(config.vae_steps):
        index = torch.randint(0, len(pixels), (config.vae_batch,), generator=generator)
        x = pixels[index]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        kl = posterior.kl().mean()
        loss = mse + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent = (recent + [(mse.item(), kl.item())])[-50:]
        if (step + 1) % config.log_every == 0 or step + 1 == config.vae_steps:
            m, k = np.mean(recent, axis=0)
            log(f"vae  step {step + 1:5d}/{config.vae_steps}  mse {m:.5f}  kl {k:8.1f}  "
                f"{time.perf_counter() - start:6.1f}s")
    vae.eval()
    m, k = np.mean(recent, axis=0)
    return {"vae_mse": float(m), "vae_kl": float(k)}


def encode_latents(vae, pixels, batch: int = 250):
    """Posterior mean and std of every image (unscaled)."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            posterior = vae.encode(pixels[i:i + batch]).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(mean, std, generator) -> float:
    """1 / std of posterior samples: what ``scaling_factor`` must be for unit-variance latents."""
    import torch

    sample = mean + std * torch.randn(mean.shape, generator=generator)
    return float(1.0 / sample.std())


def ddpm_alphas_cumprod():
    """The training schedule of the tiny pipeline's scheduler (engine.pipelines.tiny._scheduler)."""
    from diffusers import DDPMScheduler

    from engine.pipelines.tiny import _scheduler

    config = _scheduler().config
    ddpm = DDPMScheduler(beta_start=config.beta_start, beta_end=config.beta_end,
                         beta_schedule=config.beta_schedule, num_train_timesteps=config.num_train_timesteps)
    return ddpm.alphas_cumprod


def train_unet(unet, latent_mean, latent_std, scaling_factor: float, caption_index, embeddings, empty_index: int,
               config: TrainConfig, generator, log: Callable[[str], None]):
    """Epsilon-prediction training; returns (EMA UNet state dict, final losses)."""
    import torch

    alphas_cumprod = ddpm_alphas_cumprod()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = torch.clamp(snr, max=config.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.unet_steps, config.warmup))
    recent: list[float] = []
    start = time.perf_counter()
    for step in range(config.unet_steps):
        index = torch.randint(0, len(latent_mean), (config.batch,), generator=generator)
        z0 = (latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator))
        z0 = z0 * scaling_factor
        captions = caption_index[index].clone()
        dropped = torch.rand(config.batch, generator=generator) < config.caption_dropout
        captions[dropped] = empty_index
        t = torch.randint(0, len(alphas_cumprod), (config.batch,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        prediction = unet(noisy, t, embeddings[captions]).sample
        per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (weights[t] * per_sample).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v, alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        recent = (recent + [per_sample.mean().item()])[-50:]
        if (step + 1) % config.log_every == 0 or step + 1 == config.unet_steps:
            log(f"unet step {step + 1:5d}/{config.unet_steps}  eps mse {np.mean(recent):.4f}  "
                f"lr {schedule.get_last_lr()[0]:.2e}  {time.perf_counter() - start:6.1f}s")
    unet.eval()
    return ema, {"unet_eps_mse": float(np.mean(recent))}


def train(config: TrainConfig, log: Callable[[str], None] = print):
    """The whole run: returns (unet, vae, report). The modules are the EMA UNet and the trained VAE,
    with ``vae.config.scaling_factor`` set."""
    import torch

    from engine.pipelines.tiny import tiny_sd_modules

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    began = time.perf_counter()
    timings = {}

    unet, vae, text_encoder, tokenizer = tiny_sd_modules(seed=0)  # the shipped build's seeds
    t = time.perf_counter()
    data = shapes.sample(np.random.default_rng(config.seed), config.images)
    pixels = images_to_tensor([image for image, _ in data])
    caption_list = list(shapes.CAPTIONS) + [""]
    caption_index = torch.tensor([caption_list.index(caption) for _, caption in data])
    embeddings = encode_captions(tokenizer, text_encoder, caption_list)
    timings["data_s"] = time.perf_counter() - t
    log(f"{config.images} images, {len(shapes.CAPTIONS)} captions, made in {timings['data_s']:.1f}s")

    t = time.perf_counter()
    vae_losses = train_vae(vae, pixels, config, generator, log)
    timings["vae_s"] = time.perf_counter() - t
    mean, std = encode_latents(vae, pixels)
    scaling = latent_scaling_factor(mean, std, generator)
    vae.register_to_config(scaling_factor=scaling)
    log(f"latent std {1 / scaling:.4f} -> scaling_factor {scaling:.4f}")

    t = time.perf_counter()
    ema, unet_losses = train_unet(unet, mean, std, scaling, caption_index, embeddings, len(caption_list) - 1,
                                  config, generator, log)
    unet.load_state_dict(ema)
    timings["unet_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - began

    report = {
        "config": asdict(config),
        "losses": {**vae_losses, **unet_losses},
        "scaling_factor": scaling,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                       "vae": sum(p.numel() for p in vae.parameters())},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return unet, vae, report


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(directory: Path, unet, vae, report: dict, dtype: str = "float16") -> dict[str, str]:
    """Write the UNet and VAE state dicts, ``SHA256SUMS`` and ``training.json``; return the sums."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cast = getattr(torch, dtype)
    metadata = {"scaling_factor": repr(vae.config.scaling_factor), "format": "engine.training.teacher"}
    for name, module in ((UNET_FILE, unet), (VAE_FILE, vae)):
        state = {k: v.detach().to(cast).contiguous() if v.dtype.is_floating_point else v.contiguous()
                 for k, v in module.state_dict().items()}
        save_file(state, str(directory / name), metadata=metadata)
        (directory / name).chmod(0o644)
    sums = {name: sha256_of(directory / name) for name in (UNET_FILE, VAE_FILE)}
    (directory / SUMS_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    report = {**report, "files": {name: {"sha256": digest, "bytes": (directory / name).stat().st_size}
                                  for name, digest in sums.items()}}
    (directory / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return sums


def caption_check(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float):
    """Render every prompt at every seed (one generator per image, seeded ``seed``); return
    (fraction showing the caption's colour, fraction showing its colour and shape, images as
    uint8 seeds x prompts x H x W x 3)."""
    import torch

    images, colour, both = [], 0, 0
    for seed in seeds:
        generator = [torch.Generator().manual_seed(seed) for _ in prompts]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                   height=shapes.SIZE, width=shapes.SIZE, output_type="np").images
        out = (out * 255).round().astype(np.uint8)
        for pixels, prompt in zip(out, prompts):
            colour += shapes.caption_matches(pixels, prompt)
            both += shapes.caption_matches(pixels, prompt, shape=True)
        images.append(out)
    total = len(prompts) * len(seeds)
    return colour / total, both / total, np.stack(images)
