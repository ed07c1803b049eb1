"""The consistency model's arithmetic, as the reference scripts write it: the boundary scalings
``c_skip``/``c_out``, x0 and noise from a model output, the DDIM solver's step over the teacher's
noise schedule, and the guidance embedding a guidance-conditioned UNet takes."""

from __future__ import annotations

TIMESTEP_SCALING = 10.0  # --timestep_scaling_factor
SIGMA_DATA = 0.5


# -- the reference script's helpers ---------------------------------------------------------------
def scalings_for_boundary_conditions(timestep, sigma_data: float = SIGMA_DATA,
                                     timestep_scaling: float = TIMESTEP_SCALING):
    """c_skip, c_out of the consistency function (LCMScheduler.get_scalings_for_boundary_condition_discrete)."""
    scaled = timestep_scaling * timestep
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _extract(a, t, ndim: int):
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))


def predicted_original_sample(model_output, timesteps, sample, prediction_type: str, alphas, sigmas):
    a, s = _extract(alphas, timesteps, sample.ndim), _extract(sigmas, timesteps, sample.ndim)
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return a * sample - s * model_output
    raise ValueError(f"prediction type {prediction_type!r} is not supported (epsilon, sample, v_prediction)")


def predicted_noise(model_output, timesteps, sample, prediction_type: str, alphas, sigmas):
    a, s = _extract(alphas, timesteps, sample.ndim), _extract(sigmas, timesteps, sample.ndim)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - a * model_output) / s
    if prediction_type == "v_prediction":
        return a * model_output + s * sample
    raise ValueError(f"prediction type {prediction_type!r} is not supported (epsilon, sample, v_prediction)")


class DDIMSolver:
    """The script's DDIM ODE solver: ``ddim_timesteps`` solver points, one ``ddim_step`` back."""

    def __init__(self, alphas_cumprod, timesteps: int = 1000, ddim_timesteps: int = 50):
        import torch

        step_ratio = timesteps // ddim_timesteps
        self.ddim_timesteps = torch.arange(1, ddim_timesteps + 1, dtype=torch.long) * step_ratio - 1
        self.ddim_alpha_cumprods = alphas_cumprod[self.ddim_timesteps]
        self.ddim_alpha_cumprods_prev = torch.cat(
            [alphas_cumprod[:1], alphas_cumprod[self.ddim_timesteps[:-1]]])

    def to(self, device):
        self.ddim_timesteps = self.ddim_timesteps.to(device)
        self.ddim_alpha_cumprods = self.ddim_alpha_cumprods.to(device)
        self.ddim_alpha_cumprods_prev = self.ddim_alpha_cumprods_prev.to(device)
        return self

    def ddim_step(self, pred_x0, pred_noise, timestep_index):
        prev = _extract(self.ddim_alpha_cumprods_prev, timestep_index, pred_x0.ndim)
        return prev.sqrt() * pred_x0 + (1.0 - prev).sqrt() * pred_noise


def guidance_scale_embedding(w, embedding_dim: int = 512, dtype=None):
    """The w embedding a guidance-embedding UNet takes as ``timestep_cond`` (the pipelines' own)."""
    import torch

    dtype = dtype or torch.float32
    w = w * 1000.0
    half = embedding_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=dtype) * -emb)
    emb = w.to(dtype)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def noise_schedule(pipe):
    """(alphas_cumprod, prediction_type, num_train_timesteps) of the pipeline's scheduler config."""
    from diffusers import DDPMScheduler

    config = dict(pipe.scheduler.config)
    ddpm = DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return ddpm.alphas_cumprod.float(), config.get("prediction_type", "epsilon"), int(ddpm.config.num_train_timesteps)
