"""Image metadata, pure: the A1111-style ``parameters`` text and the JSON job record.

Other tools (A1111, ComfyUI importers, civitai) read the ``parameters`` PNG text chunk; the
``farm`` chunk carries the full job record so an image alone is enough to reproduce it.
"""

from __future__ import annotations

import json
from dataclasses import fields

from farm.spec import JobSpec

# diffusers scheduler class (+ distinguishing config) -> the sampler name A1111 users know
SAMPLER_NAMES = {
    "LCMScheduler": "LCM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "TCDScheduler": "TCD",
    "DPMSolverSinglestepScheduler": "DPM++ 2S",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
}


def sampler_name(scheduler: str | None, scheduler_config: dict | None) -> str:
    name = SAMPLER_NAMES.get(scheduler or "", scheduler or "Euler")
    if (scheduler_config or {}).get("use_karras_sigmas"):
        name += " Karras"
    return name


def _clean(text: str) -> str:
    return " ".join(text.split())


def a1111_parameters(job: dict) -> str:
    """The ``parameters`` text: prompt (with <lora:name:weight> tags), negative prompt, settings."""
    adapters = job.get("adapters") or []
    prompt = _clean(job["prompt"])
    tags = " ".join(f"<lora:{a['name']}:{a['weight']:g}>" for a in adapters)
    lines = [f"{prompt} {tags}".strip()]
    if job.get("negative_prompt"):
        lines.append(f"Negative prompt: {_clean(job['negative_prompt'])}")
    fields = [
        ("Steps", job["steps"]),
        ("Sampler", sampler_name(job.get("scheduler"), job.get("scheduler_config"))),
        ("CFG scale", f"{job['guidance']:g}"),
        ("Seed", job["seed"]),
        ("Size", f"{job['width']}x{job['height']}"),
        ("Model", job["model"]),
    ]
    if job.get("model_revision"):
        fields.append(("Model revision", job["model_revision"]))
    if adapters:
        weights = ", ".join(f"{a['name']}: {a['weight']:g}" for a in adapters)
        fields.append(("Lora weights", f'"{weights}"'))
    fields.append(("Recipe", job["recipe"]))
    if job.get("decoder") == "tiny":
        fields.append(("VAE", "TAESD (preview)"))  # A1111's key for the decoder that made the image
    if job.get("id") is not None:
        fields.append(("Farm job", job["id"]))
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def job_record(spec: JobSpec, *, job_id: int | None, batch: str | None, index: int | None, worker: str,
               device: str, versions: dict, scheduler: str | None = None, environment: dict | None = None) -> dict:
    """Everything needed to understand and reproduce one image (its PNG's ``farm`` chunk): every
    spec field, where the job sat, and what rendered it. ``scheduler`` makes "the model's default"
    concrete."""
    record: dict = {"id": job_id, "batch": batch, "index": index}
    for f in fields(spec):
        if f.name != "warnings":
            record[f.name] = getattr(spec, f.name)
    record["adapters"] = spec.adapter_dicts()
    record["scheduler"] = spec.scheduler or scheduler
    record.update(digest=spec.digest, worker=worker, device=device, versions=versions)
    if environment is not None:
        record["environment"] = environment
    return record


def job_record_json(job: dict) -> str:
    return json.dumps(job, sort_keys=True, separators=(",", ":"), default=str)


def parse_seed(parameters: str) -> int | None:
    """The seed named in a ``parameters`` text (what tools and tests read back)."""
    last = parameters.strip().splitlines()[-1]
    for part in last.split(", "):
        key, _, value = part.partition(": ")
        if key == "Seed":
            return int(value)
    return None
