"""Built-in models and adapters: names the farm knows without registration.

Registered entries (``farm models|adapters|embeddings add``) come from the ledger's registry; the
built-ins are here. A *family* decides the pipeline class and which recipes apply (sd15, sdxl,
ssd-1b, and the flow-matching transformer families flux and sd3). An *arch* decides which LoRAs
fit: it equals the family for real checkpoints, while the tiny test models have their own (their
layers are much smaller than the real family's). A LoRA trained for an arch plugs into every model
of that arch: that is the point of LCM-LoRA.

A model's *kind* says what it is: ``base`` (a normal checkpoint, accelerated by a LoRA), ``lcm``
(an LCM-distilled checkpoint) or ``turbo`` (SDXL-Turbo style). Accelerator LoRAs say which recipe
they serve and, for Lightning and Hyper-SD, for how many steps they were distilled.

Sources are hub ids, local directories, single files, ``s3://`` URIs, or ``builtin:NAME`` for the
tiny random-weight models the workers build locally on first use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FAMILIES = ("sd15", "sdxl", "ssd-1b", "flux", "sd3")
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024, "ssd-1b": 1024, "flux": 1024, "sd3": 1024}
# flow-matching transformer families (engine/pipelines/flux.py, sd3.py): a transformer instead of
# a UNet, CLIP + T5 text encoders, a 16-channel VAE with a shift factor
FLOW_FAMILIES = ("flux", "sd3")
# image sides must be multiples of this (default 8, the VAE's factor): FLUX packs 2x2 latent
# patches and SD3's transformer has 2x2 patches, so 8 x 2
SIZE_MULTIPLE = {"flux": 16, "sd3": 16}
# kind "turbo" covers every timestep-distilled checkpoint: SDXL-Turbo, FLUX.1-schnell, SD3.5 Large Turbo
MODEL_KINDS = ("base", "lcm", "turbo")
ADAPTER_KINDS = ("accelerator", "style")
TINY_ARCHS = ("tiny-sd", "tiny-sdxl", "tiny-ssd-1b")  # UNet families (engine/pipelines/tiny.py)
TINY_FLOW_ARCHS = ("tiny-flux", "tiny-sd3")  # engine/pipelines/tiny_flow.py
ARCHS = FAMILIES + TINY_ARCHS + TINY_FLOW_ARCHS


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    family: str
    arch: str
    native_size: int
    kind: str = "base"
    revision: str | None = None
    sha256: str | None = None  # of a single file (local or s3://), or an s3:// directory's manifest
    builtin: bool = True
    # "diffusers" (a directory or hub repo: from_pretrained) or "single-file" (one checkpoint in
    # the original LDM layout: from_single_file with the arch's local config), farm.models.checkpoints
    layout: str = "diffusers"
    provenance: str | None = None  # "job:ID": the training job that made it (issue 14)
    # (recipe, adapter) pairs: the model's own accelerators, which its recipes pick first (issue 14);
    # kept in the ledger's accelerator_bindings, not in the model's row
    bindings: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)

    def bound(self, recipe: str) -> str | None:
        return next((adapter for r, adapter in self.bindings if r == recipe), None)


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    source: str
    arch: str
    kind: str  # "accelerator" or "style"
    weight_name: str | None = None
    recipe: str | None = None  # accelerators: the recipe they serve (lcm-lora, lightning, hyper, turbo)
    steps: int | None = None  # Lightning / Hyper-SD LoRAs are distilled for one step count
    guidance_max: float | None = None  # "CFG-preserved" Hyper-SD LoRAs allow more guidance
    revision: str | None = None
    sha256: str | None = None  # of the weight file (local or s3://), computed at add
    layout: str | None = None  # "kohya" or "diffusers" (farm.models.loras), read from the file at add
    addnet_sha256: str | None = None  # what A1111 writes as "Lora hashes" (farm.models.weights)
    # issue 14: an LCM-LoRA's solver steps (LCMScheduler's original_inference_steps), and the
    # training job that made it ("job:ID")
    original_steps: int | None = None
    provenance: str | None = None
    builtin: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EmbeddingEntry:
    """A textual-inversion embedding (A1111 ``.safetensors``): prompts use it by ``token``, a word
    (A1111 uses the file's name); it fits the text encoders of one arch."""

    name: str
    source: str
    arch: str
    token: str
    vectors: int = 1  # tokens' worth of vectors it stands for
    sha256: str | None = None  # of the file: the registry's key and A1111's "TI hashes"
    builtin: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ControlNetEntry:
    """A ControlNet (issue 13): a copy of its arch's UNet encoder that steers a render with a control
    image (edges, depth, pose). ``arch`` is the UNet it was trained against; ``layout`` says how its
    weights load: a diffusers directory or hub repo (``from_pretrained``), or one ``.safetensors``
    file in the diffusers or the original (LDM) key layout (``single-file``)."""

    name: str
    source: str
    arch: str
    revision: str | None = None
    sha256: str | None = None  # of a single file (local or s3://), or an s3:// directory's manifest
    layout: str = "diffusers"
    builtin: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MotionAdapterEntry:
    """An AnimateDiff motion module (issue 27): temporal layers that diffusers' ``MotionAdapter``
    inserts into an SD1.5-family UNet, so one pipeline call renders a clip's frames together.
    ``recipe`` and ``steps``: an AnimateDiff-Lightning module is distilled for one step count and
    runs only with its recipe; ``None`` fits the LCM recipes. ``beta_schedule``: the noise
    schedule the module was trained with (AnimateDiff's is linear), which the clip's scheduler
    takes; ``None`` keeps the model's own. ``weight_name``: the file inside a hub repo."""

    name: str
    source: str
    arch: str
    weight_name: str | None = None
    recipe: str | None = None
    steps: int | None = None
    beta_schedule: str | None = "linear"
    revision: str | None = None
    sha256: str | None = None
    builtin: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


_TINY_LORA_FILE = "pytorch_lora_weights.safetensors"


def _tiny_adapters() -> list[AdapterEntry]:
    out = []
    for arch in TINY_ARCHS:
        out.append(AdapterEntry(f"{arch}-lcm-lora", f"builtin:{arch}-lcm-lora", arch, "accelerator",
                                _TINY_LORA_FILE, recipe="lcm-lora"))
        for style in ("toy", "ink"):
            out.append(AdapterEntry(f"{arch}-{style}", f"builtin:{arch}-{style}", arch, "style", _TINY_LORA_FILE))
    for arch in ("tiny-sd", "tiny-sdxl"):
        for n in (1, 2, 4, 8):
            out.append(AdapterEntry(f"{arch}-hyper-{n}step", f"builtin:{arch}-hyper-{n}step", arch, "accelerator",
                                    _TINY_LORA_FILE, recipe="hyper", steps=n))
        out.append(AdapterEntry(f"{arch}-hyper-12step-cfg", f"builtin:{arch}-hyper-12step-cfg", arch,
                                "accelerator", _TINY_LORA_FILE, recipe="hyper", steps=12, guidance_max=8.0))
    for n in (1, 2, 4, 8):
        out.append(AdapterEntry(f"tiny-sdxl-lightning-{n}step", f"builtin:tiny-sdxl-lightning-{n}step", "tiny-sdxl",
                                "accelerator", _TINY_LORA_FILE, recipe="lightning", steps=n))
    out.append(AdapterEntry("tiny-sdxl-turbo-lora", "builtin:tiny-sdxl-turbo-lora", "tiny-sdxl", "accelerator",
                            _TINY_LORA_FILE, recipe="turbo"))
    for arch in TINY_FLOW_ARCHS:  # style LoRAs on the transformer (diffusers layout)
        for style in ("toy", "ink"):
            out.append(AdapterEntry(f"{arch}-{style}", f"builtin:{arch}-{style}", arch, "style", _TINY_LORA_FILE))
    out.append(AdapterEntry("tiny-flux-hyper-8step", "builtin:tiny-flux-hyper-8step", "tiny-flux", "accelerator",
                            _TINY_LORA_FILE, recipe="flux-hyper", steps=8))
    return out


def _real_adapters() -> list[AdapterEntry]:
    out = [
        AdapterEntry("lcm-lora-sdv1-5", "latent-consistency/lcm-lora-sdv1-5", "sd15", "accelerator", recipe="lcm-lora"),
        AdapterEntry("lcm-lora-sdxl", "latent-consistency/lcm-lora-sdxl", "sdxl", "accelerator", recipe="lcm-lora"),
        AdapterEntry("lcm-lora-ssd-1b", "latent-consistency/lcm-lora-ssd-1b", "ssd-1b", "accelerator",
                     recipe="lcm-lora"),
        AdapterEntry("toy-face-sdxl", "CiroN2022/toy-face", "sdxl", "style", "toy_face_sdxl.safetensors"),
    ]
    for n in (2, 4, 8):  # SDXL-Lightning's 1-step model is a UNet, not a LoRA
        out.append(AdapterEntry(f"sdxl-lightning-{n}step", "ByteDance/SDXL-Lightning", "sdxl", "accelerator",
                                f"sdxl_lightning_{n}step_lora.safetensors", recipe="lightning", steps=n))
    for n in (1, 2, 4, 8):
        out.append(AdapterEntry(f"hyper-sdxl-{n}step", "ByteDance/Hyper-SD", "sdxl", "accelerator",
                                f"Hyper-SDXL-{n}step-lora.safetensors", recipe="hyper", steps=n))
        out.append(AdapterEntry(f"hyper-sd15-{n}step", "ByteDance/Hyper-SD", "sd15", "accelerator",
                                f"Hyper-SD15-{n}step-lora.safetensors", recipe="hyper", steps=n))
    out.append(AdapterEntry("hyper-sdxl-12step-cfg", "ByteDance/Hyper-SD", "sdxl", "accelerator",
                            "Hyper-SDXL-12steps-CFG-lora.safetensors", recipe="hyper", steps=12, guidance_max=8.0))
    out.append(AdapterEntry("hyper-sd15-12step-cfg", "ByteDance/Hyper-SD", "sd15", "accelerator",
                            "Hyper-SD15-12steps-CFG-lora.safetensors", recipe="hyper", steps=12, guidance_max=8.0))
    # Hyper-SD's FLUX.1-dev LoRA for 8 steps, used at its model card's scale 0.125 (recipe flux-hyper)
    out.append(AdapterEntry("hyper-flux-8step", "ByteDance/Hyper-SD", "flux", "accelerator",
                            "Hyper-FLUX.1-dev-8steps-lora.safetensors", recipe="flux-hyper", steps=8))
    return out


BUILTIN_MODELS: dict[str, ModelEntry] = {
    m.name: m
    for m in (
        ModelEntry("tiny-sd", "builtin:tiny-sd", "sd15", "tiny-sd", 64),
        ModelEntry("tiny-sdxl", "builtin:tiny-sdxl", "sdxl", "tiny-sdxl", 64),
        ModelEntry("tiny-ssd-1b", "builtin:tiny-ssd-1b", "ssd-1b", "tiny-ssd-1b", 64),
        ModelEntry("tiny-sd-lcm", "builtin:tiny-sd-lcm", "sd15", "tiny-sd", 64, kind="lcm"),
        ModelEntry("tiny-sdxl-lcm", "builtin:tiny-sdxl-lcm", "sdxl", "tiny-sdxl", 64, kind="lcm"),
        ModelEntry("tiny-sdxl-turbo", "builtin:tiny-sdxl-turbo", "sdxl", "tiny-sdxl", 64, kind="turbo"),
        # FLUX.1-schnell's layout (timestep-distilled: kind turbo), FLUX.1-dev's, SD3.5 Large Turbo's
        ModelEntry("tiny-flux", "builtin:tiny-flux", "flux", "tiny-flux", 64, kind="turbo"),
        ModelEntry("tiny-flux-dev", "builtin:tiny-flux-dev", "flux", "tiny-flux", 64),
        ModelEntry("tiny-sd3", "builtin:tiny-sd3", "sd3", "tiny-sd3", 64, kind="turbo"),
        ModelEntry("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15", "sd15", 512),
        ModelEntry("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", "sdxl", 1024),
        ModelEntry("ssd-1b", "segmind/SSD-1B", "ssd-1b", "ssd-1b", 1024),
        ModelEntry("sdxl-turbo", "stabilityai/sdxl-turbo", "sdxl", "sdxl", 512, kind="turbo"),
        ModelEntry("lcm-dreamshaper-v7", "SimianLuo/LCM_Dreamshaper_v7", "sd15", "sd15", 512, kind="lcm"),
        ModelEntry("flux-schnell", "black-forest-labs/FLUX.1-schnell", "flux", "flux", 1024, kind="turbo"),
        ModelEntry("flux-dev", "black-forest-labs/FLUX.1-dev", "flux", "flux", 1024),
        ModelEntry("sd35-large-turbo", "stabilityai/stable-diffusion-3.5-large-turbo", "sd3", "sd3", 1024,
                   kind="turbo"),
    )
}

BUILTIN_ADAPTERS: dict[str, AdapterEntry] = {a.name: a for a in _tiny_adapters() + _real_adapters()}
BUILTIN_EMBEDDINGS: dict[str, EmbeddingEntry] = {}  # embeddings are the users' own files
# ControlNets (issue 13): a tiny one per tiny UNet arch, built locally (engine/pipelines/tiny_controlnet.py),
# and the canny ControlNets people use with the real families; `farm controlnets add` registers more
CONTROLNET_ARCHS = ("sd15", "sdxl", "ssd-1b") + TINY_ARCHS  # the UNet archs (FLUX/SD3 ControlNets differ)
BUILTIN_CONTROLNETS: dict[str, ControlNetEntry] = {
    c.name: c
    for c in (
        *(ControlNetEntry(f"{arch}-canny", f"builtin:{arch}-canny", arch) for arch in TINY_ARCHS),
        ControlNetEntry("controlnet-canny-sd15", "lllyasviel/control_v11p_sd15_canny", "sd15"),
        ControlNetEntry("controlnet-canny-sdxl", "diffusers/controlnet-canny-sdxl-1.0", "sdxl"),
    )
}

# Motion modules (issue 27): a tiny one for tiny-sd (random temporal layers, built locally by
# engine/pipelines/tiny_motion.py) and a tiny 4-step "Lightning" one, and the published SD1.5 ones;
# `farm motion add` registers more
MOTION_ARCHS = ("sd15", "sdxl", "tiny-sd")  # AnimateDiff publishes SD1.5 modules and an SDXL beta
BUILTIN_MOTION_ADAPTERS: dict[str, MotionAdapterEntry] = {
    m.name: m
    for m in (
        MotionAdapterEntry("tiny-sd-motion", "builtin:tiny-sd-motion", "tiny-sd", beta_schedule=None),
        MotionAdapterEntry("tiny-sd-motion-lightning-4step", "builtin:tiny-sd-motion-lightning-4step", "tiny-sd",
                           recipe="animatediff-lightning", steps=4, beta_schedule=None),
        MotionAdapterEntry("animatediff-v1-5-3", "guoyww/animatediff-motion-adapter-v1-5-3", "sd15"),
        MotionAdapterEntry("animatelcm", "wangfuyun/AnimateLCM", "sd15"),
        *(MotionAdapterEntry(f"animatediff-lightning-{n}step", "ByteDance/AnimateDiff-Lightning", "sd15",
                             f"animatediff_lightning_{n}step_diffusers.safetensors", recipe="animatediff-lightning",
                             steps=n) for n in (1, 2, 4, 8)),
        MotionAdapterEntry("animatediff-sdxl-beta", "guoyww/animatediff-motion-adapter-sdxl-beta", "sdxl"),
    )
}

# Decoders a job may pick: the model's own VAE, or a tiny autoencoder (TAESD) for previews. TAESD
# decodes the same latents with a fraction of the VAE's FLOPs (SDXL's VAE decode at 1024 costs
# about as much as a 4-step denoise); its images are softer, so it is opt-in per job.
DECODERS = ("full", "tiny")
PREVIEW_DECODERS = {
    "sd15": "madebyollin/taesd",
    "sdxl": "madebyollin/taesdxl",
    "ssd-1b": "madebyollin/taesdxl",  # SSD-1B keeps SDXL's VAE
    "flux": "madebyollin/taef1",  # 16 latent channels
    "sd3": "madebyollin/taesd3",
    **{arch: f"builtin:{arch}-taesd" for arch in TINY_ARCHS + TINY_FLOW_ARCHS},
}
assert set(PREVIEW_DECODERS) == set(ARCHS), "every arch a model may have needs a preview decoder"


def tiny_build(name: str) -> tuple[str, str, int] | None:
    """How to build ``builtin:NAME``: (what: "model", "lora", "decoder", "controlnet" or "motion", tiny base model or arch,
    seed), or None.

    Each tiny model and LoRA has its own seed, derived from its name so the list never drifts.
    """
    import zlib

    seed = zlib.crc32(name.encode()) % 100_000
    if name in BUILTIN_MODELS and BUILTIN_MODELS[name].source == f"builtin:{name}":
        return "model", name, seed
    entry = BUILTIN_ADAPTERS.get(name)
    if entry is not None and entry.source == f"builtin:{name}":
        return "lora", entry.arch, seed
    if name.endswith("-taesd") and name[: -len("-taesd")] in TINY_ARCHS + TINY_FLOW_ARCHS:
        return "decoder", name[: -len("-taesd")], seed
    controlnet = BUILTIN_CONTROLNETS.get(name)
    if controlnet is not None and controlnet.source == f"builtin:{name}":
        return "controlnet", controlnet.arch, seed  # copied from the tiny model of that name's UNet
    motion = BUILTIN_MOTION_ADAPTERS.get(name)
    if motion is not None and motion.source == f"builtin:{name}":
        return "motion", motion.arch, seed  # issue 27: temporal layers sized for the tiny UNet
    return None
