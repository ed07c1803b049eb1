"""How close few-step samplers come to the teacher's own 50-step samples (issues 14 and 21).

``evaluate`` renders the evaluation prompts from fixed initial noise with the teacher's reference
sampler (DDIM, 50 steps, the model's own scheduler config, classifier-free guidance) and then, from
the *same* noise, with every sampler at its best documented setting (``SAMPLERS``):

- ``teacher-ddim``: DDIM with trailing timestep spacing (what Hyper-SD and SDXL-Lightning use at few
  steps; the config's ``leading`` spacing with ``steps_offset=1`` runs a 1-step render at t=1 and
  returns the noise), with the same guidance;
- ``teacher-dpmpp-2m-karras``: DPM-Solver++ 2M with Karras sigmas, the strong multistep baseline,
  at 4 steps and more;
- ``teacher-lcm``: ``LCMScheduler`` on the teacher without a LoRA, with the same guidance (context:
  what the scheduler alone does);
- ``lcm-lora``: the teacher plus the distilled LoRA with ``LCMScheduler``, guidance 1 (no CFG), its
  documented setting; ``lcm-model``: a full-model student, its guidance embedded.

Each row holds, per sample and then as a mean with a 95% bootstrap interval
(``engine.training.metrics``): the latent MSE and the pixel RMSE (decoded with the model's VAE, 0..255)
against the reference sample from the same noise, and, where the prompts are the tiny teacher's
("a red circle"), whether the image shows the prompt's colour and shape (``task_accuracy``). The
``floor`` row is the reference sampler again with *other* noise: the error of a sample that is right
in distribution but unrelated to the noise (a sampler whose error reaches it has lost the pairing);
the reference's own task accuracy (``ceiling``) is what a sampler faithful to the teacher reaches (a
distilled sampler can exceed it by drawing cleaner, less varied shapes).
``comparisons`` says, per step count, whether the LoRA beats each teacher sampler on the same
samples (a paired bootstrap), and ``one_step_error`` is the LCM consistency function's estimate of
x0 from points on the reference trajectories against their final latents.

Everything runs on a clone of the pipeline made of its own modules (``engine.kinds``) with a clean
copy of its UNet (adapters stripped, as ``engine.training.distill`` does), so the pipeline passed in is
never changed: its scheduler, adapters and fused weights stay as they were.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

REFERENCE_STEPS = 50
ONE_STEP_POINTS = (0, 10, 20, 30, 40)  # indices into the 50-step reference trajectory (t ~ 981 .. 181)
DEFAULT_GUIDANCE = 6.0  # pipeline (Imagen) convention: 1 + the middle of DistillSettings' w range [2, 8]
CHUNK = 32  # samples per pipeline call (a fixed size, so results do not depend on `samples`' grouping)
ADAPTER_NAME = "farm-eval-lcm-lora"
OTHER_NOISE = 1_000_003  # the floor's initial noise: seeds offset by this from the evaluation's
MULTISTEP_MIN_STEPS = 4  # DPM-Solver++ 2M Karras is evaluated from here up (its documented few-step range)
METRICS = {
    "latent_mse": "mean squared difference of the final latents (as the UNet sees them) from the reference "
                  "sample with the same initial noise; lower is better",
    "pixel_rmse": "root mean squared difference of the decoded images (0..255) from the reference sample with "
                  "the same initial noise; lower is better",
    "task_accuracy": "fraction of images that show the prompt's colour and shape (engine.training.shapes.describe); "
                     "only for the tiny teacher's prompts; higher is better",
}


def _clone(pipe, scheduler, unet):
    from engine.kinds import from_components

    return from_components(type(pipe), pipe, unet=unet, scheduler=scheduler, add_watermarker=False,
                           requires_safety_checker=False)


def samplers(config: dict, original_inference_steps: int, guidance: float) -> dict:
    """name -> (scheduler factory, guidance, the setting in words, the step counts it is run at
    given the requested ones), each at its best documented setting."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler

    # SD's own DDIM settings where the model's config does not say (DDIMScheduler's defaults clip
    # x0 to [-1, 1], which suits pixels, not latents)
    ddim_config = {"clip_sample": False, "set_alpha_to_one": False, **config}
    return {
        "reference": (lambda: DDIMScheduler.from_config(ddim_config), guidance,
                      f"DDIM {REFERENCE_STEPS} steps, the model's scheduler config "
                      f"({ddim_config.get('timestep_spacing', 'leading')} spacing), CFG {guidance:g}", None),
        "teacher-ddim": (lambda: DDIMScheduler.from_config(ddim_config, timestep_spacing="trailing"), guidance,
                         f"DDIM, trailing spacing, CFG {guidance:g}", lambda n: True),
        "teacher-dpmpp-2m-karras": (
            lambda: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                            use_karras_sigmas=True),
            guidance, f"DPM-Solver++ 2M Karras, CFG {guidance:g} (from {MULTISTEP_MIN_STEPS} steps)",
            lambda n: n >= MULTISTEP_MIN_STEPS),
        "teacher-lcm": (lambda: LCMScheduler.from_config(config, original_inference_steps=original_inference_steps),
                        guidance, f"LCMScheduler without the LoRA, CFG {guidance:g}", lambda n: True),
        "lcm-lora": (lambda: LCMScheduler.from_config(config, original_inference_steps=original_inference_steps),
                     1.0, f"LCMScheduler with the LoRA, guidance 1 (no CFG), original_inference_steps "
                          f"{original_inference_steps}", lambda n: True),
        "lcm-model": (lambda: LCMScheduler.from_config(config, original_inference_steps=original_inference_steps),
                      guidance, f"LCMScheduler, the student's embedded guidance w = {guidance - 1:g}", lambda n: True),
    }


def evaluate(pipe, family: str, lora: bytes | None, prompts: list[str], *, steps=(1, 2, 4, 8), samples: int = 64,
             seed: int = 0, original_inference_steps: int = 50, guidance: float = DEFAULT_GUIDANCE,
             student: tuple[dict, bytes] | None = None,
             on_progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """The table (see the module's docstring), JSON-able. ``student``: a full-model distillation's
    UNet (config, safetensors weights), evaluated as ``lcm-model`` instead of a LoRA.
    ``on_progress(done, total)`` after every pipeline call, so a watchdog sees it is alive."""
    import numpy as np
    import torch

    from engine.training import metrics
    from engine.training.data import encode_captions
    from engine.training.distill import clean_unet_copy
    from engine.training.lcm import noise_schedule, predicted_original_sample, scalings_for_boundary_conditions
    from engine.training.settings import FAMILIES, SDXL_FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"evaluation supports the {', '.join(FAMILIES)} families, not {family!r}")
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (an interval), not {samples}")
    steps = tuple(int(s) for s in steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be positive step counts, not {steps}")

    table = samplers(dict(pipe.scheduler.config), original_inference_steps, guidance)
    ddim = table["reference"][0]
    unet = clean_unet_copy(pipe.unet).requires_grad_(False).eval()
    clone = _clone(pipe, ddim(), unet)
    device = clone._execution_device
    scale = clone.vae_scale_factor
    size = unet.config.sample_size * scale
    names = [prompts[i % len(prompts)] for i in range(samples)]

    def noise(offset: int):
        return torch.cat([torch.randn((1, unet.config.in_channels, size // scale, size // scale),
                                      generator=torch.Generator().manual_seed(offset + seed + i)) for i in range(samples)])

    initial = noise(0)
    chunks = -(-samples // CHUNK)
    runs = 2 + sum(1 for name in ("teacher-ddim", "teacher-lcm", "teacher-dpmpp-2m-karras")
                   for n in steps if table[name][3](n))
    runs += len(steps) if lora is not None or student is not None else 0
    progress = {"done": 0, "total": runs * chunks}

    def tick():
        progress["done"] += 1
        on_progress(progress["done"], progress["total"])

    def render(pipeline, scheduler_factory, n: int, scale_cfg: float, start_noise, capture: dict | None = None):
        out = []
        for start in range(0, samples, CHUNK):
            stop = min(start + CHUNK, samples)
            pipeline.scheduler = scheduler_factory()
            callback = None
            if capture is not None:
                def callback(_pipe, i, t, kwargs, start=start):
                    if i + 1 in ONE_STEP_POINTS:
                        capture.setdefault(i + 1, []).append(kwargs["latents"].detach().clone())
                    return kwargs
                capture.setdefault(0, []).append(start_noise[start:stop].to(device) * pipeline.scheduler.init_noise_sigma)
            latents = pipeline(prompt=names[start:stop], latents=start_noise[start:stop].clone().to(device, unet.dtype),
                               num_inference_steps=n, guidance_scale=scale_cfg, height=size, width=size,
                               generator=[torch.Generator().manual_seed(seed + i) for i in range(start, stop)],
                               output_type="latent", return_dict=False, callback_on_step_end=callback)[0]
            out.append(latents.float().cpu())
            tick()
        return torch.cat(out)

    decode_vae = clone.vae  # an fp16 VAE that must not decode in fp16 (SDXL's: force_upcast) as an fp32 copy
    if decode_vae.dtype == torch.float16 and getattr(decode_vae.config, "force_upcast", False):
        import copy

        decode_vae = copy.deepcopy(decode_vae).to(torch.float32)

    def decode(latents) -> "np.ndarray":
        """Latents as the UNet sees them -> uint8 images (N, H, W, 3), as the pipeline decodes."""
        config = decode_vae.config
        lmean, lstd = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        images = []
        for start in range(0, len(latents), CHUNK):
            z = latents[start:start + CHUNK].float()
            if lmean is not None and lstd is not None:
                z = z * torch.tensor(lstd).view(1, -1, 1, 1) / config.scaling_factor + torch.tensor(lmean).view(1, -1, 1, 1)
            else:
                z = z / config.scaling_factor
            pixels = decode_vae.decode(z.to(device, decode_vae.dtype)).sample.float().cpu()
            images.append(((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(images)

    def measures(latents, reference_latents, reference_images) -> tuple[dict, dict]:
        """(row values, per-sample values) of one sampler's latents."""
        images = decode(latents)
        per = {"latent_mse": metrics.latent_mse(latents.numpy(), reference_latents.numpy()),
               "pixel_rmse": metrics.pixel_rmse(images, reference_images)}
        hits = metrics.task_hits(images, names)
        if hits is not None:
            per["task_accuracy"] = np.asarray(hits)
        row = {k: metrics.interval(v) for k, v in per.items()}
        return row, per

    rows, per_sample = [], {}

    def add(sampler: str, n: int, latents):
        row, per = measures(latents, reference, reference_images)
        rows.append({"sampler": sampler, "steps": n, "setting": table[sampler][2] if sampler in table else "", **row})
        per_sample[(sampler, n)] = per

    with torch.no_grad():
        capture: dict[int, list] = {}
        reference = render(clone, ddim, REFERENCE_STEPS, guidance, initial, capture)
        reference_images = decode(reference)
        probe = ddim()
        probe.set_timesteps(REFERENCE_STEPS)
        trajectory_t = [int(probe.timesteps[j]) for j in ONE_STEP_POINTS]
        points = {j: torch.cat(capture[j]).float() for j in ONE_STEP_POINTS}
        ceiling_hits = metrics.task_hits(reference_images, names)

        other = render(clone, ddim, REFERENCE_STEPS, guidance, noise(OTHER_NOISE))
        floor_row, _ = measures(other, reference, reference_images)
        floor = {"sampler": "teacher-ddim-50, other noise", "steps": REFERENCE_STEPS,
                 "setting": table["reference"][2] + ", from other initial noise", **floor_row}

        for name in ("teacher-ddim", "teacher-dpmpp-2m-karras", "teacher-lcm"):
            factory, cfg, _, runs_at = table[name]
            for n in steps:
                if runs_at(n):
                    add(name, n, render(clone, factory, n, cfg, initial))

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
            factory, cfg, _, _ = table["lcm-lora"]
            for n in steps:
                add("lcm-lora", n, render(clone, factory, n, cfg, initial))
            one_step["lcm-lora"] = one_step_error(False)

        if student is not None:  # a full-model distillation: its own UNet, w embedded (time_cond_proj_dim)
            from diffusers import UNet2DConditionModel
            from safetensors.torch import load

            from engine.training.lcm import guidance_scale_embedding

            config, weights = student
            student_unet = UNet2DConditionModel.from_config(config)
            student_unet.load_state_dict(load(weights))
            student_unet.to(device, unet.dtype).requires_grad_(False).eval()
            factory, cfg, _, _ = table["lcm-model"]
            full = _clone(pipe, factory(), student_unet)
            for n in steps:
                add("lcm-model", n, render(full, factory, n, cfg, initial))
            w = torch.full((samples,), guidance - 1.0)  # the pipelines' convention: w = guidance_scale - 1
            w_embedding = guidance_scale_embedding(w, config["time_cond_proj_dim"]).to(device, unet.dtype)
            one_step["lcm-model"] = one_step_error(False, student_unet, w_embedding)

    distilled = "lcm-lora" if lora is not None else ("lcm-model" if student is not None else None)
    comparisons = []
    for n in steps:
        if distilled is None:
            break
        for peer in ("teacher-ddim", "teacher-dpmpp-2m-karras", "teacher-lcm"):
            if (peer, n) not in per_sample:
                continue
            mine, theirs = per_sample[(distilled, n)], per_sample[(peer, n)]
            comparisons.append({"sampler": distilled, "against": peer, "steps": n, **{
                metric: metrics.paired(mine[metric], theirs[metric], lower_is_better=metric != "task_accuracy")
                for metric in mine}})

    return {
        "reference": f"teacher, {table['reference'][2]}",
        "metrics": {k: v for k, v in METRICS.items() if ceiling_hits is not None or k != "task_accuracy"},
        "interval": f"95% percentile bootstrap over the {samples} samples ({metrics.BOOTSTRAP} resamples)",
        "guidance": guidance,
        "original_inference_steps": original_inference_steps,
        "prompts": list(dict.fromkeys(prompts)),
        "samples": samples,
        "rows": rows,
        "floor": floor,
        "ceiling": {"task_accuracy": metrics.interval(ceiling_hits)} if ceiling_hits is not None else None,
        "comparisons": comparisons,
        "one_step_error": {k: round(sum(v.values()) / len(v), 6) for k, v in one_step.items()},
        "one_step_error_by_t": {k: {str(t): round(e, 6) for t, e in v.items()} for k, v in one_step.items()},
    }
