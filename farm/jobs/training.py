"""Training jobs (issue 14): ``farm distill`` as one farm job, checked and spelt out. Pure.

A distillation is a ``JobSpec`` of kind ``distill``: ``model`` is the teacher, ``steps`` the
training steps, ``seed`` the training seed, and ``training`` holds what only a training job has
(the name of the result, the dataset manifest, LoRA rank, skipping step k, the guidance range,
solver, batch size, learning rate, full-model or LoRA, the held-out evaluation prompts). The job
runs on one worker (``workers.training``), which records its progress and checkpoints in the
ledger (``farm.ledger.training``) and registers the result:

- a LoRA (the default) as an ``accelerator`` adapter of the teacher's arch for the ``lcm-lora``
  recipe, with ``original_steps`` = 1000 / k (what ``LCMScheduler`` is told) and the training job
  as its provenance;
- a full-model distillation (``--full``) as a model of kind ``lcm`` (the ``lcm`` recipe).

The method is latent consistency distillation (the LCM paper; diffusers'
``train_lcm_distill_lora_sd_wds.py``): a DDIM solver over 1000 / k timesteps, the teacher guided
with w drawn from the guidance range, the consistency function's boundary conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farm.errors import InputError
from farm.jobs.spec import JobSpec
from farm.jobs.values import parse_float, parse_int
from farm.models.catalog import ModelEntry
from farm.models.names import check_name

DISTILL_KIND = "distill"
TRAINING_KINDS = (DISTILL_KIND,)
DISTILL_FAMILIES = ("sd15", "sdxl", "ssd-1b")  # the UNet families engine.training conditions (SDXL: pooled + time ids)
SOLVERS = ("ddim",)  # the ODE solver used during training only
TRAIN_TIMESTEPS = 1000
MAX_TRAIN_STEPS = 1_000_000
MAX_RANK = 256
MAX_BATCH = 512
DEFAULTS: dict[str, Any] = {"steps": 1000, "rank": 16, "skip": 20, "guidance_range": (2.0, 8.0), "solver": "ddim",
            "batch_size": 8, "lr": 1e-4, "checkpoint_every": 100, "eval_samples": 32}
MAX_EVAL_SAMPLES = 4096
MIN_HELD_OUT_CAPTIONS = 5  # fewer distinct captions than this: evaluate on the training captions
HELD_OUT_FRACTION = 0.1
MAX_EVAL_PROMPTS = 8
MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048


@dataclass(frozen=True)
class DistillRequest:
    """``farm distill`` as given (any field may be missing or malformed)."""

    teacher: object = None
    name: object = None
    steps: object = None
    rank: object = None
    skip: object = None
    guidance_range: object = None  # "2,8" or a (lo, hi) pair
    solver: object = None
    batch_size: object = None
    lr: object = None
    checkpoint_every: object = None
    eval_samples: object = None  # samples per sampler and step count in the evaluation
    seed: object = None
    full: bool = False
    resolution: object = None  # the square side images are resized and centre-cropped to (default: native)
    gradient_checkpointing: bool = False


def parse_range(value: object) -> tuple[float, float]:
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise InputError("guidance_range", f"expected MIN,MAX such as 2,8, got {value!r}")
    if len(parts) != 2:
        raise InputError("guidance_range", f"expected MIN,MAX such as 2,8, got {value!r}")
    lo, hi = (parse_float("guidance_range", p) for p in parts)
    if lo > hi:
        raise InputError("guidance_range", f"min {lo:g} is greater than max {hi:g}")
    if lo < 1.0 or hi > 30.0:
        raise InputError("guidance_range", f"{lo:g},{hi:g} is outside 1..30")
    return lo, hi


def eval_split(captions: list[str]) -> tuple[list[str], bool]:
    """The evaluation prompts: the last tenth of the distinct captions (in first-seen order), held
    out of training; with fewer than ``MIN_HELD_OUT_CAPTIONS`` distinct captions nothing can be
    spared, and the training captions themselves are used (recorded as not held out)."""
    distinct = list(dict.fromkeys(captions))
    if len(distinct) < MIN_HELD_OUT_CAPTIONS:
        return distinct[:MAX_EVAL_PROMPTS], False
    count = min(MAX_EVAL_PROMPTS, max(1, round(len(distinct) * HELD_OUT_FRACTION)))
    return distinct[-count:], True


def _setting(request: DistillRequest, name: str, lo: int, hi: int) -> int:
    value = getattr(request, name)
    return DEFAULTS[name] if value is None else parse_int(name, value, lo, hi)


def resolve_distill(request: DistillRequest, teacher: ModelEntry, *, taken: set[str], data: dict,
                    captions: list[str], seed: int) -> JobSpec:
    """The training job's spec. ``data``: the stored dataset (``manifest`` sha256, ``source`` as
    given, ``examples`` count); ``captions``: every example's caption; ``taken``: the names of
    registered adapters and models (the result's name must be new)."""
    name = check_name("name", request.name)
    if name in taken:
        raise InputError("name", f"{name} is already registered (pick another --name, or remove it first)")
    if teacher.family not in DISTILL_FAMILIES:
        raise InputError("teacher", f"{teacher.name} is a {teacher.family} model; distill supports "
                                    f"{', '.join(DISTILL_FAMILIES)} teachers")
    if teacher.kind != "base":
        raise InputError("teacher", f"{teacher.name} is a {teacher.kind} model; the teacher is a base model")
    steps = _setting(request, "steps", 1, MAX_TRAIN_STEPS)
    rank = _setting(request, "rank", 1, MAX_RANK)
    skip = _setting(request, "skip", 1, TRAIN_TIMESTEPS // 2)
    if TRAIN_TIMESTEPS % skip:
        raise InputError("skip", f"{skip} does not divide {TRAIN_TIMESTEPS} timesteps (e.g. 10, 20, 25, 50)")
    batch_size = _setting(request, "batch_size", 1, MAX_BATCH)
    checkpoint_every = _setting(request, "checkpoint_every", 1, MAX_TRAIN_STEPS)
    eval_samples = _setting(request, "eval_samples", 2, MAX_EVAL_SAMPLES)
    lo, hi = DEFAULTS["guidance_range"] if request.guidance_range is None else parse_range(request.guidance_range)
    solver = DEFAULTS["solver"] if request.solver is None else request.solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise InputError("solver", f"{solver!r} is not a solver (known: {', '.join(SOLVERS)})")
    lr = DEFAULTS["lr"] if request.lr is None else parse_float("lr", request.lr)
    if not 0 < lr <= 1:
        raise InputError("lr", f"{lr:g} is outside (0, 1]")
    resolution = teacher.native_size if request.resolution is None else \
        parse_int("resolution", request.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
    if resolution % 8:
        raise InputError("resolution", f"{resolution} is not a multiple of 8")
    if not isinstance(request.gradient_checkpointing, bool):
        raise InputError("gradient_checkpointing", f"expected true or false, got {request.gradient_checkpointing!r}")
    if not captions:
        raise InputError("data", "the dataset has no examples")
    prompts, held_out = eval_split(captions)
    training = {
        "name": name, "output": "model" if request.full else "lora", "data": data, "rank": rank, "skip": skip,
        "guidance_range": [lo, hi], "solver": solver, "batch_size": batch_size, "lr": lr,
        "checkpoint_every": checkpoint_every, "original_steps": TRAIN_TIMESTEPS // skip,
        "eval_prompts": prompts, "eval_held_out": held_out, "eval_samples": eval_samples,
        "resolution": resolution,
    }
    if request.gradient_checkpointing:  # memory for time: the same result, so recorded only when asked
        training["gradient_checkpointing"] = True
    native = teacher.native_size
    return JobSpec(
        prompt=f"distill {teacher.name} into {name}", negative_prompt="", seed=seed, steps=steps,
        guidance=hi, width=native, height=native, model=teacher.name, model_revision=teacher.revision,
        family=teacher.family, recipe="lcm" if request.full else "lcm-lora", scheduler=None,
        scheduler_config={}, adapters=(), kind=DISTILL_KIND, training=training,
    )


def result_key(spec: JobSpec) -> str:
    """Where the trained weights go in the farm's store."""
    training = spec.training or {}
    folder = "models" if training.get("output") == "model" else "adapters"
    return f"{folder}/{training['name']}/{RESULT_FILE[training.get('output', 'lora')]}"


RESULT_FILE = {"lora": "pytorch_lora_weights.safetensors", "model": "unet/diffusion_pytorch_model.safetensors"}


def checkpoint_key(job_id: int, step: int, token: str) -> str:
    """A checkpoint's store key: the attempt's token in the name, so a superseded attempt never
    overwrites the checkpoint the ledger points at (fencing: farm.ledger.training)."""
    return f"training/{job_id}/checkpoint-{step:08d}-{token[:12]}.pt"
