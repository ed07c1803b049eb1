"""What a distillation run is told: its settings (the reference scripts' flags), its result, the
families and solvers it supports, and the checks that refuse what it cannot use."""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("sd15", "sdxl", "ssd-1b")
SDXL_FAMILIES = ("sdxl", "ssd-1b")
SOLVERS = ("ddim",)
# train_lcm_distill_lora_sd_wds.py's default target modules (filtered to what a UNet has)
LORA_TARGET_MODULES = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)
TIME_COND_PROJ_DIM = 256  # --unet_time_cond_proj_dim (full model, when the teacher has none)
EMA_DECAY = 0.95  # --ema_decay (full model's target network)
ADAM = {"betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}
MAX_GRAD_NORM = 1.0


class DataError(ValueError):
    """An example, a setting or a checkpoint that distillation cannot use: bad input, not a fault
    of the machine, so retrying cannot help (the worker records it as the job's input error)."""


@dataclass(frozen=True)
class DistillSettings:
    steps: int
    rank: int = 4
    skip: int = 20  # the solver's skipping step k: 1000 / k solver timesteps (LCMScheduler's original_inference_steps)
    guidance_min: float = 2.0  # w range, LCM convention (pipeline guidance_scale = w + 1)
    guidance_max: float = 8.0
    solver: str = "ddim"
    batch_size: int = 8
    lr: float = 1e-4
    full: bool = False  # train the whole UNet (with a guidance embedding) instead of a LoRA
    seed: int = 0
    checkpoint_every: int = 50  # 0: never
    huber_c: float = 0.001
    lora_alpha: int | None = None  # None: = rank (scale 1)
    resolution: int | None = None  # square side images are resized and centre-cropped to (None: the UNet's native size)
    gradient_checkpointing: bool = False  # recompute the student's activations in the backward pass (memory for time)


@dataclass
class DistillResult:
    weights: bytes  # LoRA: a diffusers-format LoRA safetensors file; full: the student UNet's weights (safetensors)
    steps_done: int
    losses: list[float]  # one per step, resumed steps included
    original_inference_steps: int  # num_train_timesteps // skip, for LCMScheduler
    unet_config: dict | None = None  # full: the student UNet's config (config.json of a diffusers UNet)
    trained_modules: list[str] = field(default_factory=list)  # LoRA: the target modules found in the UNet



# -- validation -------------------------------------------------------------------------------
def validate(family: str, examples, settings: DistillSettings) -> None:
    """``DataError``, with a one-line message, for settings distillation cannot use. The examples
    themselves are read as training reaches them (``engine.training.data``); only their count and
    captions are looked at here."""
    checks = [
        (family not in FAMILIES, f"distillation supports the {', '.join(FAMILIES)} families, not {family!r}"),
        (settings.solver not in SOLVERS, f"unknown solver {settings.solver!r} (known: {', '.join(SOLVERS)})"),
        (settings.steps < 1, f"steps must be at least 1, not {settings.steps}"),
        (settings.guidance_min > settings.guidance_max,
         f"guidance_min {settings.guidance_min} is above guidance_max {settings.guidance_max}"),
        (settings.batch_size < 1, f"batch_size must be at least 1, not {settings.batch_size}"),
        (settings.rank < 1, f"rank must be at least 1, not {settings.rank}"),
        (settings.lora_alpha is not None and settings.lora_alpha < 1,
         f"lora_alpha must be at least 1, not {settings.lora_alpha}"),
        (not settings.lr > 0, f"lr must be positive, not {settings.lr}"),
        (not settings.huber_c > 0, f"huber_c must be positive, not {settings.huber_c}"),
        (settings.skip < 1, f"skip must be at least 1, not {settings.skip}"),
        (settings.checkpoint_every < 0, f"checkpoint_every must be 0 (never) or more, not {settings.checkpoint_every}"),
        (settings.resolution is not None and (settings.resolution < 8 or settings.resolution % 8),
         f"resolution must be a multiple of 8, not {settings.resolution}"),
        (not len(examples), "no examples to distil on"),
    ]
    for failed, message in checks:
        if failed:
            raise DataError(message)
