"""Latent consistency distillation of a loaded SD1.5- or SDXL-family pipeline (issue 14).

``distill`` trains an LCM-LoRA (default) or a full LCM student UNet (``full=True``) the way
diffusers' reference scripts do (examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py,
``..._lora_sdxl_wds.py`` and, for the full model, ``train_lcm_distill_sd_wds.py``):

- DDIM solver over the teacher's noise schedule with skipping step ``k`` (``skip``): the solver's
  timesteps are ``[k-1, 2k-1, ..., T-1]`` (``T // k`` of them); a training point is a random solver
  timestep ``t_{n+k}``, the latents noised to it, and the target point one solver step later at
  ``t_n = t_{n+k} - k`` (0 at the end).
- Guided teacher: ``w ~ U[guidance_min, guidance_max]`` per example, combined in the LCM paper's
  convention ``x0 = x0_cond + w (x0_cond - x0_uncond)`` (the same for the noise); a pipeline's
  ``guidance_scale`` is ``w + 1`` in that convention. The unconditional embedding is the text
  encoder's "" for SD1.5 and zeros (sequence and pooled) for SDXL, as the scripts use.
- Boundary conditions ``c_skip``/``c_out`` with timestep scaling 10 (``LCMScheduler``'s),
  pseudo-Huber loss ``mean(sqrt(d^2 + c^2) - c)`` with ``huber_c``.
- LoRA: peft ``LoraConfig`` on the script's target modules (attention, projections, feed-forward,
  resnet convolutions, resamplers, time-embedding projections) that the UNet has; the teacher is
  the same UNet with its adapters disabled; the target is the student itself without gradients
  (no separate target network, as the LoRA script).
- Full model: a student UNet with a guidance embedding (``time_cond_proj_dim`` 256, the script's
  default) fed ``w``'s embedding (a teacher that already has one is refused); an EMA target network (decay 0.95); the
  teacher is a frozen copy of the pipeline's UNet.
- AdamW (betas 0.9/0.999, weight decay 1e-2, eps 1e-8), constant learning rate, gradient norm
  clipped to 1, latents from the VAE's latent distribution (sampled) times its scaling factor.

Data as the scripts prepare it: every image resized (shorter side, bilinear) and centre-cropped to
the resolution (default the UNet's native size), SDXL conditioned on each image's original size
and crop (``time_ids``), each batch VAE-encoded (fp32 where the VAE would overflow in fp16) and
text-encoded as it is drawn, so memory does not grow with the dataset (``engine.training.data``).

Differences from the scripts, all deliberate: examples come from a list or an ``Examples`` reader
(no webdataset), the crop is the centre one (no random crop or flip); the conditional and
unconditional teacher passes run as one batch; the full student's new guidance projection
(``time_embedding.cond_proj``) starts at zero, so the student starts as exactly the teacher (the
script leaves it randomly initialised); results are stored in the pipeline's dtype.

The pipeline is left as it was: the teacher and student are deep copies of ``pipe.unet`` (any
peft adapter layers stripped from the copy; a pipeline with fused adapters is refused), the text
encoders and the VAE run under ``torch.no_grad`` and are never modified. That costs one extra
UNet (LoRA) or three (full: teacher, student, EMA target) in memory.

Everything random comes from one CPU ``torch.Generator`` seeded with ``settings.seed`` (latent
sampling, solver timesteps, noise, ``w``) and from the data order, a pure function of the seed and
the position (one permutation per epoch). A checkpoint holds the trainable weights, the optimizer
state, the generator state and the step, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from dataclasses import asdict
from types import SimpleNamespace
from typing import Callable

from engine.training.data import (
    as_examples,
    data_indices,
    encode_captions,
    encode_images,
    latents_from,
    prepare,
    training_vae,
)
from engine.training.export import lora_bytes, unet_bytes
from engine.training.lcm import (
    DDIMSolver,
    guidance_scale_embedding,
    noise_schedule,
    predicted_noise,
    predicted_original_sample,
    scalings_for_boundary_conditions,
)
from engine.training.settings import (
    ADAM,
    EMA_DECAY,
    LORA_TARGET_MODULES,
    MAX_GRAD_NORM,
    SDXL_FAMILIES,
    TIME_COND_PROJ_DIM,
    DataError,
    DistillResult,
    DistillSettings,
    validate,
)

__all__ = ["DistillResult", "DistillSettings", "clean_unet_copy", "distill", "result_from_checkpoint"]

CHECKPOINT_FORMAT = 1
# settings a resumed run must share with the run that wrote the checkpoint
_RESUME_KEYS = ("rank", "skip", "guidance_min", "guidance_max", "solver", "batch_size", "lr", "full", "seed",
                "huber_c", "lora_alpha", "resolution")



# -- the pipeline's frozen parts --------------------------------------------------------------
def clean_unet_copy(unet):
    """A deep copy of ``unet`` without peft adapter layers, hooks or a compiled call."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer) and getattr(module, "merged", False):
            raise ValueError("the pipeline's UNet has fused LoRA weights: unfuse them before distilling")
    clone = copy.deepcopy(unet)
    if getattr(clone, "_compiled_call_impl", None) is not None:
        clone._compiled_call_impl = None  # it would call the original module
    if hasattr(clone, "_hf_hook"):
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(clone, recurse=True)
    if any(isinstance(m, BaseTunerLayer) for m in clone.modules()):
        from diffusers.utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(clone)
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if hasattr(clone, attr):
                delattr(clone, attr)
    return clone



# -- the distillation ---------------------------------------------------------------------------
def distill(pipe, family: str, examples, settings: DistillSettings, *, resume: bytes | None = None,
            on_progress: Callable[[int, float, float], None] = lambda step, loss, steps_per_s: None,
            on_checkpoint: Callable[[int, bytes], None] = lambda step, state: None,
            should_stop: Callable[[], str | None] = lambda: None) -> DistillResult:
    """Distil ``pipe``'s UNet (the teacher) into an LCM-LoRA or, with ``settings.full``, a full LCM
    UNet, on ``examples``: a list of (uint8 HxWx3 image, caption) pairs, or ``engine.training.data.
    Examples`` read as training reaches them. Images of any size are resized (shorter side) and
    centre-cropped to ``settings.resolution`` (default: the UNet's native size); each batch is
    encoded as it is drawn, so memory does not grow with the dataset.

    ``on_progress(step, loss, steps_per_s)`` after every step; ``on_checkpoint(step, blob)`` every
    ``checkpoint_every`` steps before the last (``blob``: ``torch.load(io.BytesIO(blob),
    weights_only=True)`` loads it; ``resume=blob`` continues from it exactly); ``should_stop()``
    before every step: a reason raises ``engine.runner.Interrupted``. ``pipe`` is left unchanged.
    """
    import torch

    examples = as_examples(examples)
    validate(family, examples, settings)
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        raise DataError("the teacher UNet already embeds guidance (time_cond_proj_dim): distil from a base model")
    if family in SDXL_FAMILIES and getattr(pipe, "text_encoder_2", None) is None:
        raise DataError(f"family {family!r} needs an SDXL pipeline (two text encoders)")
    state = _load_checkpoint(resume, settings) if resume is not None else None
    if state is not None and int(state["step"]) > settings.steps:
        raise DataError(f"the checkpoint is at step {state['step']}, past the {settings.steps} steps asked for")
    if state is not None and state["data"]["examples"] != len(examples):
        raise DataError(f"the checkpoint was written for {state['data']['examples']} examples, not {len(examples)}")

    device = pipe._execution_device
    dtype = pipe.unet.dtype
    alphas_cumprod, prediction_type, num_train_timesteps = noise_schedule(pipe)
    if settings.skip > num_train_timesteps:
        raise DataError(f"skip {settings.skip} is above the teacher's {num_train_timesteps} timesteps")
    num_ddim = num_train_timesteps // settings.skip
    topk = num_train_timesteps // num_ddim
    solver = DDIMSolver(alphas_cumprod, timesteps=num_train_timesteps, ddim_timesteps=num_ddim).to(device)
    alpha_schedule = alphas_cumprod.sqrt().to(device)
    sigma_schedule = (1 - alphas_cumprod).sqrt().to(device)

    # the data: read, resized, cropped and encoded batch by batch (the unconditional row once)
    resolution = settings.resolution or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    vae = training_vae(pipe, family)
    empty = encode_captions(pipe, family, [""], device)

    nets = _networks(pipe, settings, device)
    student, teacher, target, names, params = nets.student, nets.teacher, nets.target, nets.names, nets.params
    proj_dim = nets.proj_dim
    optimizer = torch.optim.AdamW(params, lr=settings.lr, **ADAM)
    mixed = dtype != torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if mixed else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if mixed and dtype == torch.float16 else None

    generator = torch.Generator().manual_seed(settings.seed)
    steps_done, losses = 0, []
    if state is not None:
        if state["names"] != names:
            raise DataError("the checkpoint's trainable weights do not match this UNet")
        with torch.no_grad():
            for p, saved in zip(params, state["trainable"]):
                p.copy_(saved.to(p.device, p.dtype))
            if settings.full:
                target.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["rng"])
        steps_done, losses = int(state["step"]), [float(x) for x in state["losses"]]

    def checkpoint(step: int) -> bytes:
        blob = {
            "format": CHECKPOINT_FORMAT, "step": step, "settings": _plain_settings(settings),
            "names": names, "trainable": [p.detach().cpu().clone() for p in params],
            "optimizer": optimizer.state_dict(), "rng": generator.get_state(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "data": {"examples": len(examples), "position": step * settings.batch_size},
            "losses": list(losses), "trained_modules": list(nets.trained_modules),
        }
        if settings.full:
            blob["target"] = {k: v.detach().cpu().clone() for k, v in target.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        return buffer.getvalue()

    n = len(examples)
    bsz = settings.batch_size
    started = time.perf_counter()
    first = steps_done
    while steps_done < settings.steps:
        reason = should_stop()
        if reason:
            from engine.runner import Interrupted

            raise Interrupted(f"{reason} at step {steps_done}", reason)
        # 1. the batch: latents sampled from the VAE's distributions, and the caption embeddings
        idx = data_indices(settings.seed, n, steps_done * bsz, bsz)
        prepared = [prepare(i, examples.image(i), resolution) for i in idx]
        mean, std = encode_images(vae, [p[0] for p in prepared], device)
        latents = latents_from(vae, mean, std, generator).to(device, torch.float32)
        text = encode_captions(pipe, family, [examples.caption(i) for i in idx], device, uncond=False)
        prompt_embeds = text["prompt_embeds"].to(device, dtype)
        uncond_embeds = empty["uncond"].expand_as(text["prompt_embeds"]).to(device, dtype)
        if family in SDXL_FAMILIES:  # the scripts' micro-conditioning: original size, crop, target size
            ids = torch.tensor([[*original, *crop, resolution, resolution] for _, original, crop in prepared],
                               dtype=torch.float32).to(device, dtype)
            cond_added = {"text_embeds": text["pooled"].to(device, dtype), "time_ids": ids}
            uncond_added = {"text_embeds": empty["uncond_pooled"].expand(bsz, -1).to(device, dtype), "time_ids": ids}
        else:
            cond_added = uncond_added = None
        # 2. a solver timestep t_{n+k} per example, and the end of its step t_n
        index = torch.randint(0, num_ddim, (bsz,), generator=generator).to(device)
        start_timesteps = solver.ddim_timesteps[index]
        timesteps = torch.clamp(start_timesteps - topk, min=0)
        # 3. boundary scalings
        c_skip_start, c_out_start = (x.view(-1, 1, 1, 1) for x in scalings_for_boundary_conditions(start_timesteps))
        c_skip, c_out = (x.view(-1, 1, 1, 1) for x in scalings_for_boundary_conditions(timesteps))
        # 4. noise the latents to t_{n+k}
        noise = torch.randn(latents.shape, generator=generator).to(device)
        sa = alpha_schedule[start_timesteps].view(-1, 1, 1, 1)
        ss = sigma_schedule[start_timesteps].view(-1, 1, 1, 1)
        noisy = sa * latents + ss * noise
        # 5. w ~ U[w_min, w_max]
        w = (settings.guidance_max - settings.guidance_min) * torch.rand((bsz,), generator=generator) + settings.guidance_min
        w_embedding = guidance_scale_embedding(w, proj_dim).to(device) if proj_dim else None
        w = w.view(bsz, 1, 1, 1).to(device)

        # 6. the online student's consistency estimate at t_{n+k}
        with autocast():
            out = student(noisy, start_timesteps, timestep_cond=w_embedding, encoder_hidden_states=prompt_embeds,
                          added_cond_kwargs=cond_added).sample
        pred_x0 = predicted_original_sample(out.float(), start_timesteps, noisy, prediction_type,
                                            alpha_schedule, sigma_schedule)
        model_pred = c_skip_start * noisy + c_out_start * pred_x0

        # 7. the guided teacher's DDIM step from t_{n+k} to t_n (cond and uncond in one batch)
        with torch.no_grad():
            if not settings.full:
                teacher.disable_adapters()
            try:
                with autocast():
                    both = teacher(
                        torch.cat([noisy, noisy]), torch.cat([start_timesteps, start_timesteps]),
                        encoder_hidden_states=torch.cat([prompt_embeds, uncond_embeds]),
                        added_cond_kwargs=None if cond_added is None else
                        {k: torch.cat([cond_added[k], uncond_added[k]]) for k in cond_added},
                    ).sample.float()
            finally:
                if not settings.full:
                    teacher.enable_adapters()
            st2, noisy2 = torch.cat([start_timesteps, start_timesteps]), torch.cat([noisy, noisy])
            x0s = predicted_original_sample(both, st2, noisy2, prediction_type, alpha_schedule, sigma_schedule)
            eps = predicted_noise(both, st2, noisy2, prediction_type, alpha_schedule, sigma_schedule)
            cond_x0, uncond_x0 = x0s.chunk(2)
            cond_eps, uncond_eps = eps.chunk(2)
            teacher_x0 = cond_x0 + w * (cond_x0 - uncond_x0)
            teacher_eps = cond_eps + w * (cond_eps - uncond_eps)
            x_prev = solver.ddim_step(teacher_x0, teacher_eps, index)

            # 8. the target: the student itself (LoRA) or its EMA (full) at t_n, without gradients
            with autocast():
                target_out = target(x_prev, timesteps, timestep_cond=w_embedding,
                                    encoder_hidden_states=prompt_embeds, added_cond_kwargs=cond_added).sample.float()
            target_x0 = predicted_original_sample(target_out, timesteps, x_prev, prediction_type,
                                                  alpha_schedule, sigma_schedule)
            target_pred = c_skip * x_prev + c_out * target_x0

        # 9. pseudo-Huber loss, AdamW step with the gradient norm clipped
        loss = torch.mean(torch.sqrt((model_pred.float() - target_pred.float()) ** 2 + settings.huber_c**2)
                          - settings.huber_c)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if settings.full:
            with torch.no_grad():
                for t_param, s_param in zip(target.parameters(), student.parameters()):
                    t_param.mul_(EMA_DECAY).add_(s_param, alpha=1 - EMA_DECAY)

        steps_done += 1
        value = float(loss.detach())
        losses.append(value)
        elapsed = time.perf_counter() - started
        on_progress(steps_done, value, (steps_done - first) / elapsed if elapsed > 0 else 0.0)
        if settings.checkpoint_every and steps_done % settings.checkpoint_every == 0 and steps_done < settings.steps:
            on_checkpoint(steps_done, checkpoint(steps_done))

    return _result(pipe, nets, settings, steps_done, losses, num_train_timesteps, dtype)


def _networks(pipe, settings: DistillSettings, device) -> SimpleNamespace:
    """Teacher, student and target UNets, and the student's trainable parameters (names, tensors)."""
    import torch

    base = clean_unet_copy(pipe.unet)
    base.requires_grad_(False)
    if settings.full:
        student = _full_student(base, TIME_COND_PROJ_DIM, device)
        target = copy.deepcopy(student).requires_grad_(False)
        target.train()
        if settings.gradient_checkpointing:  # after the copy: the target runs without gradients anyway
            student.enable_gradient_checkpointing()
        names, params = zip(*student.named_parameters())
        return SimpleNamespace(teacher=base.eval(), student=student, target=target, names=list(names),
                               params=list(params), proj_dim=TIME_COND_PROJ_DIM, config=None, trained_modules=[])
    from peft import LoraConfig

    present = {name for name, _ in base.named_modules()}
    trained = [t for t in LORA_TARGET_MODULES if any(n == t or n.endswith("." + t) for n in present)]
    config = LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha or settings.rank, lora_dropout=0.0,
                        target_modules=trained)
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A's init from the global CPU generator
        torch.random.default_generator.manual_seed(settings.seed)
        base.add_adapter(config)
    base.train()
    if settings.gradient_checkpointing:  # the teacher and target passes run under no_grad, where it does nothing
        base.enable_gradient_checkpointing()
    names, params = [], []
    for name, param in base.named_parameters():
        if param.requires_grad:  # peft leaves only the adapter trainable
            param.data = param.data.float()  # trainable weights in fp32 (the script's cast_training_params)
            names.append(name)
            params.append(param)
    # the teacher is the same UNet with its adapter disabled; the target the student itself
    return SimpleNamespace(teacher=base, student=base, target=base, names=names, params=params, proj_dim=None,
                           config=config, trained_modules=trained)


def _result(pipe, nets, settings, steps_done, losses, num_train_timesteps, dtype) -> DistillResult:
    original_inference_steps = num_train_timesteps // settings.skip
    if settings.full:
        return DistillResult(unet_bytes(nets.student, dtype), steps_done, losses, original_inference_steps,
                             unet_config=json.loads(nets.student.to_json_string()))
    return DistillResult(lora_bytes(pipe, nets.student, nets.config, dtype), steps_done, losses,
                         original_inference_steps, trained_modules=nets.trained_modules)


def result_from_checkpoint(pipe, blob: bytes) -> DistillResult:
    """The result a checkpoint's weights make (a LoRA file, or the full student's weights), without
    training further: to evaluate a run part-way, or keep the last checkpoint of a stopped one."""
    import torch

    state = _load_checkpoint(blob, None)
    settings = DistillSettings(**state["settings"])
    device = pipe._execution_device
    nets = _networks(pipe, settings, device)
    if state["names"] != nets.names:
        raise DataError("the checkpoint's trainable weights do not match this UNet")
    with torch.no_grad():
        for p, saved in zip(nets.params, state["trainable"]):
            p.copy_(saved.to(p.device, p.dtype))
    _, _, num_train_timesteps = noise_schedule(pipe)
    return _result(pipe, nets, settings, int(state["step"]), [float(x) for x in state["losses"]],
                   num_train_timesteps, pipe.unet.dtype)


def _full_student(base, proj_dim: int, device):
    """The full model's student: the teacher's UNet with a guidance embedding, in fp32 (the script's
    ``from_config(..., time_cond_proj_dim=...)`` plus ``load_state_dict(strict=False)``), its new
    ``cond_proj`` zeroed so the student starts as the teacher."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        student = UNet2DConditionModel.from_config(base.config, time_cond_proj_dim=proj_dim)
    missing, unexpected = student.load_state_dict(
        {k: v.float() for k, v in base.state_dict().items()}, strict=False)
    if unexpected or any(not k.startswith("time_embedding.cond_proj") for k in missing):
        raise ValueError(f"the student UNet does not take the teacher's weights ({(missing + unexpected)[:3]})")
    with torch.no_grad():
        student.time_embedding.cond_proj.weight.zero_()
    student.to(device)  # fp32, as from_config made it
    student.requires_grad_(True)
    student.train()
    return student


def _plain_settings(settings: DistillSettings) -> dict:
    return {k: v for k, v in asdict(settings).items()}


def _load_checkpoint(blob: bytes, settings: DistillSettings | None) -> dict:
    import torch

    try:
        state = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable blob is the caller's input error
        raise DataError(f"the resume blob is not a distillation checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError("the resume blob is not a distillation checkpoint of this format")
    saved = state["settings"]
    changed = [] if settings is None else [k for k in _RESUME_KEYS if saved.get(k) != getattr(settings, k)]
    if changed:
        raise DataError(f"the checkpoint was written with other settings ({', '.join(changed)})")
    return state
