"""Image metadata, pure: the A1111-style ``parameters`` text and the JSON job record.

Other tools (A1111, ComfyUI importers, civitai) read the ``parameters`` PNG text chunk; the
``farm`` chunk carries the full job record so an image alone is enough to reproduce it.

The ``parameters`` text is A1111's (``create_infotext``): the prompt, ``Negative prompt: ...``,
then one line of ``key: value`` pairs, a value quoted as JSON when it holds a comma, a colon or a
newline. Image sites link the files that made an image by the hashes in it: ``Model hash`` (10 hex
digits of the checkpoint file's sha256, right before ``Model``), ``Lora hashes`` (``"name: 12 hex
digits, ..."``, of each LoRA's tensor bytes) and ``TI hashes`` (``"token: 12 hex digits, ..."``, of
each embedding file). They come from the registry (``resource_hashes``); the worker hashes nothing.
"""

from __future__ import annotations

import json
from dataclasses import fields

from farm.jobs.spec import Catalog, JobSpec
from farm.models.weights import a1111_model_hash, a1111_short_hash

# diffusers scheduler class (+ distinguishing config) -> the sampler name A1111 users know
SAMPLER_NAMES = {
    "LCMScheduler": "LCM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "TCDScheduler": "TCD",
    "DPMSolverSinglestepScheduler": "DPM++ 2S",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "FlowMatchEulerDiscreteScheduler": "Euler",  # FLUX and SD3 (what Forge and ComfyUI call it)
}


def sampler_name(scheduler: str | None, scheduler_config: dict | None) -> str:
    name = SAMPLER_NAMES.get(scheduler or "", scheduler or "Euler")
    if (scheduler_config or {}).get("use_karras_sigmas"):
        name += " Karras"
    return name


def _clean(text: str) -> str:
    return " ".join(text.split())


def quote(value) -> str:
    """A value as A1111 writes it: JSON-quoted when a comma, colon or newline would split it."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _label(name: str) -> str:
    return name.replace(":", "").replace(",", "")  # as A1111 cleans names in its hash lists


def resource_hashes(spec: JobSpec, catalog: Catalog | None) -> dict:
    """The full sha256s the registry holds for the files that shaped ``spec``'s image:
    ``{"model": sha256, "loras": {name: sha256}, "embeddings": {token: sha256}}``, each present
    only where known (a single-file model, registered LoRA and embedding files). A diffusers model
    directory has no ``model`` hash: A1111 and image sites know a checkpoint by its single file,
    and no one file of a directory is that."""
    if catalog is None:
        return {}
    hashes: dict = {}
    model = catalog.models.get(spec.model)
    if model is not None and model.sha256 and getattr(model, "layout", None) == "single-file":
        hashes["model"] = model.sha256
    loras = {a.name: lora.addnet_sha256 for a in spec.adapters
             if (lora := catalog.adapters.get(a.name)) is not None and lora.addnet_sha256}
    if loras:
        hashes["loras"] = loras
    embeddings = {ti.token: ti.sha256 for name in spec.embeddings
                  if (ti := catalog.embeddings.get(name)) is not None and ti.sha256}
    if embeddings:
        hashes["embeddings"] = embeddings
    controlnet = catalog.controlnets.get(spec.controlnet) if spec.controlnet else None  # issue 13
    if controlnet is not None and controlnet.sha256:
        hashes["controlnet"] = controlnet.sha256
    motion = catalog.motion_adapters.get(spec.clip["motion"]) if spec.clip else None  # issue 27
    if motion is not None and motion.sha256:
        hashes["motion"] = motion.sha256
    return hashes


def image_kind_fields(job: dict) -> list[tuple[str, object]]:
    """A1111's keys for an image job (issue 13): ``Denoising strength`` (img2img, inpaint and the
    hires pass), ``Mask blur``, ``Hires upscale``/``Hires upscaler``, and the ControlNet unit as the
    A1111 ControlNet extension writes it (``ControlNet 0: "Module: canny, Model: NAME [hash], Weight:
    0.8, ..."``, quoted because it holds commas and colons)."""
    from farm.jobs.kinds import CANNY_THRESHOLDS, UPSCALER

    kind = job.get("kind") or "txt2img"
    out: list[tuple[str, object]] = []
    if job.get("strength") is not None and kind != "controlnet":
        out.append(("Denoising strength", f"{job['strength']:g}"))
    if kind == "inpaint":
        out.append(("Mask blur", job.get("mask_blur") or 0))
    if kind == "upscale":
        out += [("Hires upscale", f"{job['upscale']:g}"), ("Hires upscaler", UPSCALER)]
    if kind == "controlnet":
        sha = (job.get("hashes") or {}).get("controlnet")
        module = job.get("control_preprocess") or "none"
        unit = [("Module", module), ("Model", f"{job['controlnet']} [{sha[:8]}]" if sha else job["controlnet"]),
                ("Weight", f"{job['control_scale']:g}"), ("Resize Mode", "Just Resize")]
        if module == "canny":
            unit += [("Threshold A", CANNY_THRESHOLDS[0]), ("Threshold B", CANNY_THRESHOLDS[1])]
        unit += [("Guidance Start", 0), ("Guidance End", 1), ("Pixel Perfect", False), ("Control Mode", "Balanced")]
        out.append(("ControlNet 0", ", ".join(f"{k}: {v}" for k, v in unit)))
    if kind == "clip" and job.get("clip"):  # issue 27: as A1111's AnimateDiff extension writes its unit
        clip = job["clip"]
        sha = ((job.get("hashes") or {}).get("motion") or "")[:8]
        out.append(("AnimateDiff", f"model: {clip['motion']}{f' [{sha}]' if sha else ''}, video_length: "
                                   f"{clip['frames']}, fps: {clip['fps']}, format: {clip['format']}"))
    return out


def a1111_parameters(job: dict) -> str:
    """The ``parameters`` text: prompt (with <lora:name:weight> tags), negative prompt, settings."""
    adapters = job.get("adapters") or []
    prompt = _clean(job["prompt"])
    tags = " ".join(f"<lora:{a['name']}:{a['weight']:g}>" for a in adapters)
    lines = [f"{prompt} {tags}".strip()]
    if job.get("negative_prompt"):
        lines.append(f"Negative prompt: {_clean(job['negative_prompt'])}")
    hashes = job.get("hashes") or {}
    fields = [
        ("Steps", job["steps"]),
        ("Sampler", sampler_name(job.get("scheduler"), job.get("scheduler_config"))),
        ("CFG scale", f"{job['guidance']:g}"),
        ("Seed", job["seed"]),
        ("Size", f"{job['width']}x{job['height']}"),
    ]
    if hashes.get("model"):
        fields.append(("Model hash", a1111_model_hash(hashes["model"])))
    fields.append(("Model", job["model"]))
    if job.get("model_revision"):
        fields.append(("Model revision", job["model_revision"]))
    if adapters:
        fields.append(("Lora weights", ", ".join(f"{a['name']}: {a['weight']:g}" for a in adapters)))
    loras = hashes.get("loras") or {}
    lora_hashes = [f"{_label(a['name'])}: {a1111_short_hash(loras[a['name']])}" for a in adapters if a["name"] in loras]
    if lora_hashes:
        fields.append(("Lora hashes", ", ".join(lora_hashes)))
    if hashes.get("embeddings"):
        fields.append(("TI hashes", ", ".join(f"{_label(token)}: {a1111_short_hash(sha)}"
                                              for token, sha in hashes["embeddings"].items())))
    fields += image_kind_fields(job)  # issue 13
    fields.append(("Recipe", job["recipe"]))
    if job.get("decoder") == "tiny":
        fields.append(("VAE", "TAESD (preview)"))  # A1111's key for the decoder that made the image
    if job.get("id") is not None:
        fields.append(("Farm job", job["id"]))
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields))
    return "\n".join(lines)


def job_record(spec: JobSpec, *, job_id: int | None, batch: str | None, index: int | None, worker: str,
               device: str, versions: dict, scheduler: str | None = None, environment: dict | None = None,
               hashes: dict | None = None) -> dict:
    """Everything needed to understand and reproduce one image (its PNG's ``farm`` chunk): every
    spec field, where the job sat, and what rendered it. ``scheduler`` makes "the model's default"
    concrete; ``hashes`` (``resource_hashes``) name the files by sha256."""
    record: dict = {"id": job_id, "batch": batch, "index": index}
    for f in fields(spec):
        if f.name != "warnings":
            record[f.name] = getattr(spec, f.name)
    record["adapters"] = spec.adapter_dicts()
    record["scheduler"] = spec.scheduler or scheduler
    if spec.kind != "txt2img":  # issue 13: the denoising steps that ran (int(steps x strength)) beside steps
        from farm.jobs.kinds import denoise_steps

        record["denoise_steps"] = denoise_steps(spec.kind, spec.steps, spec.strength)
    record.update(digest=spec.digest, worker=worker, device=device, versions=versions)
    if environment is not None:
        record["environment"] = environment
    if hashes:
        record["hashes"] = hashes
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
