"""How close few-step samplers come to the teacher's own 50-step DDIM samples (issue 14).

``evaluate`` renders the same prompts and initial noise with
  (a) the teacher with DDIM and classifier-free guidance ("teacher-ddim"),
  (b) the teacher with ``LCMScheduler`` and the same guidance, no LoRA ("teacher-lcm"),
  (c) the teacher plus an LCM-LoRA with ``LCMScheduler``, no CFG ("lcm-lora"),
at a few step counts, and reports each one's Frechet distance to the reference (the teacher, DDIM
50 steps, same prompts and seeds) in a fixed feature space (``FEATURE_SPACE``), and the one-step
error: from points x_t on the reference trajectories, the model's one-step estimate of x0 (the
LCM consistency function, ``c_skip x_t + c_out x0_pred``) against the trajectory's final latent.

Everything runs on a clone of the pipeline made of its own modules (``engine.kinds``) with a
clean copy of its UNet (adapters stripped, as ``engine.training.distill`` does), so the pipeline passed in
is never changed: its scheduler, adapters and fused weights stay as they were.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

FEATURE_GRID = 2
FEATURE_SPACE = ("final latents (the VAE's 4 channels, scaled as the UNet sees them) average-pooled to a "
                 f"{FEATURE_GRID}x{FEATURE_GRID} grid and flattened: {4 * FEATURE_GRID ** 2} dimensions")
REFERENCE_STEPS = 50
ONE_STEP_POINTS = (0, 10, 20, 30, 40)  # indices into the 50-step reference trajectory (t ~ 981 .. 181)
DEFAULT_GUIDANCE = 6.0  # pipeline (Imagen) convention: 1 + the middle of DistillSettings' w range [2, 8]
CHUNK = 32  # samples per pipeline call (a fixed size, so results do not depend on `samples`' grouping)
ADAPTER_NAME = "farm-eval-lcm-lora"


def features(latents) -> "np.ndarray":  # noqa: F821 - numpy is imported lazily
    """Latents (N, C, h, w) -> (N, C * FEATURE_GRID**2) float64 features."""
    import torch

    pooled = torch.nn.functional.adaptive_avg_pool2d(latents.float(), FEATURE_GRID)
    return pooled.flatten(1).double().cpu().numpy()


def _sqrt_psd(matrix):
    import numpy as np

    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(x, y) -> float:
    """Frechet distance between Gaussians fitted to the rows of ``x`` and ``y``:
    |mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2), with eigendecomposition square
    roots of the symmetric positive semi-definite matrices (numpy only)."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    s_x, s_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = _sqrt_psd(s_x)
    middle = root @ s_y @ root
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * trace_covmean)
    return max(distance, 0.0)


def _clone(pipe, scheduler, unet):
    from engine.kinds import from_components

    return from_components(type(pipe), pipe, unet=unet, scheduler=scheduler, add_watermarker=False,
                           requires_safety_checker=False)


def evaluate(pipe, family: str, lora: bytes | None, prompts: list[str], *, steps=(1, 2, 4, 8), samples: int = 64,
             seed: int = 0, original_inference_steps: int = 50, guidance: float = DEFAULT_GUIDANCE,
             student: tuple[dict, bytes] | None = None) -> dict:
    """The table: Frechet distance to the reference per sampler and step count, and the one-step
    error of the teacher and of the LoRA under the LCM consistency function. JSON-able.
    ``student``: a full-model distillation's UNet (config, safetensors weights), evaluated as
    ``lcm-model`` (its guidance embedded, no CFG) instead of a LoRA."""
    import torch
    from diffusers import DDIMScheduler, LCMScheduler

    from engine.training.data import encode_captions
    from engine.training.distill import clean_unet_copy
    from engine.training.lcm import noise_schedule, predicted_original_sample, scalings_for_boundary_conditions
    from engine.training.settings import FAMILIES, SDXL_FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"evaluation supports the {', '.join(FAMILIES)} families, not {family!r}")
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (a covariance), not {samples}")
    steps = tuple(int(s) for s in steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be positive step counts, not {steps}")

    config = dict(pipe.scheduler.config)
    unet = clean_unet_copy(pipe.unet).requires_grad_(False).eval()
    # SD's own DDIM settings where the model's scheduler config does not say (DDIMScheduler's
    # defaults clip x0 to [-1, 1], which suits pixels, not latents)
    ddim_config = {"clip_sample": False, "set_alpha_to_one": False, **config}
    ddim = lambda: DDIMScheduler.from_config(ddim_config)  # noqa: E731
    lcm = lambda: LCMScheduler.from_config(config, original_inference_steps=original_inference_steps)  # noqa: E731
    clone = _clone(pipe, ddim(), unet)
    device = clone._execution_device
    scale = clone.vae_scale_factor
    size = unet.config.sample_size * scale
    names = [prompts[i % len(prompts)] for i in range(samples)]
    initial = torch.cat([torch.randn((1, unet.config.in_channels, size // scale, size // scale),
                                     generator=torch.Generator().manual_seed(seed + i)) for i in range(samples)])

    def render(scheduler_factory, n: int, scale_cfg: float, capture: dict | None = None):
        out = []
        for start in range(0, samples, CHUNK):
            stop = min(start + CHUNK, samples)
            clone.scheduler = scheduler_factory()
            callback = None
            if capture is not None:
                def callback(_pipe, i, t, kwargs, start=start):
                    if i + 1 in ONE_STEP_POINTS:
                        capture.setdefault(i + 1, []).append(kwargs["latents"].detach().clone())
                    return kwargs
                capture.setdefault(0, []).append(initial[start:stop].to(device) * clone.scheduler.init_noise_sigma)
            latents = clone(prompt=names[start:stop], latents=initial[start:stop].clone().to(device, unet.dtype),
                            num_inference_steps=n, guidance_scale=scale_cfg, height=size, width=size,
                            generator=[torch.Generator().manual_seed(seed + i) for i in range(start, stop)],
                            output_type="latent", return_dict=False, callback_on_step_end=callback)[0]
            out.append(latents.float().cpu())
        return torch.cat(out)

    with torch.no_grad():
        capture: dict[int, list] = {}
        reference = render(ddim, REFERENCE_STEPS, guidance, capture)
        probe = ddim()
        probe.set_timesteps(REFERENCE_STEPS)
        trajectory_t = [int(probe.timesteps[j]) for j in ONE_STEP_POINTS]
        points = {j: torch.cat(capture[j]).float() for j in ONE_STEP_POINTS}
        reference_features = features(reference)

        rows = []
        for label, factory, cfg in (("teacher-ddim", ddim, guidance), ("teacher-lcm", lcm, guidance)):
            for n in steps:
                rows.append({"sampler": label, "steps": n,
                             "frechet": round(frechet_distance(features(render(factory, n, cfg)), reference_features), 6)})

        # the one-step estimates of x0 from the trajectory points
        alphas_cumprod, prediction_type, _ = noise_schedule(pipe)
        alphas = alphas_cumprod.sqrt().to(device)
        sigmas = (1 - alphas_cumprod).sqrt().to(device)
        unique = list(dict.fromkeys(names))
        text = encode_captions(clone, family, unique, device)
        rows_of = torch.tensor([unique.index(p) for p in names])
        cond = text["prompt_embeds"][rows_of].to(device, unet.dtype)
        uncond = text["uncond"].expand_as(cond).to(device, unet.dtype)
        if family in SDXL_FAMILIES:
            ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).expand(samples, -1)
            ids = ids.to(device, unet.dtype)
            added = {"text_embeds": text["pooled"][rows_of].to(device, unet.dtype), "time_ids": ids}
            uncond_added = {"text_embeds": text["uncond_pooled"].expand(samples, -1).to(device, unet.dtype),
                            "time_ids": ids}
        else:
            added = uncond_added = None
        final = reference.to(device)

        def predict(x_t, t, sl, embeds, extra, model=unet, w_embedding=None):
            extra = None if extra is None else {k: v[sl] for k, v in extra.items()}
            cond_w = None if w_embedding is None else w_embedding[sl]
            return model(x_t.to(unet.dtype), t, timestep_cond=cond_w, encoder_hidden_states=embeds[sl],
                         added_cond_kwargs=extra).sample.float()

        def one_step_error(guided: bool, model=unet, w_embedding=None) -> dict[int, float]:
            """``model``/``w_embedding``: a full-model student, its guidance embedded (no CFG)."""
            errors = {}
            for j, t_value in zip(ONE_STEP_POINTS, trajectory_t):
                total = 0.0
                for start in range(0, samples, CHUNK):
                    sl = slice(start, min(start + CHUNK, samples))
                    x_t = points[j][sl].to(device)
                    t = torch.full((x_t.shape[0],), t_value, dtype=torch.long, device=device)
                    out = predict(x_t, t, sl, cond, added, model, w_embedding)
                    if guided:  # the pipeline's CFG: uncond + g (cond - uncond)
                        uncond_out = predict(x_t, t, sl, uncond, uncond_added)
                        out = uncond_out + guidance * (out - uncond_out)
                    x0 = predicted_original_sample(out, t, x_t, prediction_type, alphas, sigmas)
                    c_skip, c_out = (v.view(-1, 1, 1, 1) for v in scalings_for_boundary_conditions(t.float()))
                    estimate = c_skip * x_t + c_out * x0
                    total += float(((estimate - final[sl]) ** 2).sum())
                errors[t_value] = total / final.numel()
            return errors

        one_step = {"teacher-lcm": one_step_error(True)}

        if lora is not None:
            with tempfile.TemporaryDirectory(prefix="farm-eval-") as tmp:
                from engine.training.export import LORA_WEIGHT_NAME

                Path(tmp, LORA_WEIGHT_NAME).write_bytes(lora)
                with torch.enable_grad():  # peft sets requires_grad while loading
                    clone.load_lora_weights(tmp, weight_name=LORA_WEIGHT_NAME, adapter_name=ADAPTER_NAME)
            for n in steps:
                rows.append({"sampler": "lcm-lora", "steps": n,
                             "frechet": round(frechet_distance(features(render(lcm, n, 1.0)), reference_features), 6)})
            one_step["lcm-lora"] = one_step_error(False)

        if student is not None:  # a full-model distillation: its own UNet, w embedded (time_cond_proj_dim)
            from diffusers import UNet2DConditionModel
            from safetensors.torch import load

            from engine.training.lcm import guidance_scale_embedding

            config, weights = student
            student_unet = UNet2DConditionModel.from_config(config)
            student_unet.load_state_dict(load(weights))
            student_unet.to(device, unet.dtype).requires_grad_(False).eval()
            full = _clone(pipe, lcm(), student_unet)
            for n in steps:
                out = []
                for start in range(0, samples, CHUNK):
                    stop = min(start + CHUNK, samples)
                    full.scheduler = lcm()
                    latents = full(prompt=names[start:stop], latents=initial[start:stop].clone().to(device, unet.dtype),
                                   num_inference_steps=n, guidance_scale=guidance, height=size, width=size,
                                   output_type="latent", return_dict=False)[0]
                    out.append(latents.float().cpu())
                rows.append({"sampler": "lcm-model", "steps": n,
                             "frechet": round(frechet_distance(features(torch.cat(out)), reference_features), 6)})
            w = torch.full((samples,), guidance - 1.0)  # the pipelines' convention: w = guidance_scale - 1
            w_embedding = guidance_scale_embedding(w, config["time_cond_proj_dim"]).to(device, unet.dtype)
            one_step["lcm-model"] = one_step_error(False, student_unet, w_embedding)

    return {
        "feature_space": FEATURE_SPACE,
        "reference": f"teacher, DDIM {REFERENCE_STEPS} steps",
        "guidance": guidance,
        "original_inference_steps": original_inference_steps,
        "rows": rows,
        "one_step_error": {k: round(sum(v.values()) / len(v), 6) for k, v in one_step.items()},
        "one_step_error_by_t": {k: {str(t): round(e, 6) for t, e in v.items()} for k, v in one_step.items()},
        "samples": samples,
    }
