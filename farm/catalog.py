"""Built-in models and adapters: names the farm knows without registration.

A *family* decides the pipeline class and which recipes apply (sd15, sdxl, ssd-1b). An *arch*
decides which LoRAs fit: it equals the family for real checkpoints, while the tiny test models
have their own (their layers are much smaller than the real family's).

Sources are hub ids, local directories, single files, ``s3://`` URIs, or ``builtin:NAME`` for the
tiny random-weight models the workers build locally on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("sd15", "sdxl", "ssd-1b")
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024, "ssd-1b": 1024}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    family: str
    arch: str
    native_size: int
    revision: str | None = None
    # accelerator role (e.g. "lcm-lora") -> adapter name, for recipes that load one
    accelerators: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    source: str
    arch: str
    kind: str  # "accelerator" or "style"
    weight_name: str | None = None
    revision: str | None = None


_TINY_LORA_FILE = "pytorch_lora_weights.safetensors"

BUILTIN_MODELS: dict[str, ModelEntry] = {
    m.name: m
    for m in (
        ModelEntry("tiny-sd", "builtin:tiny-sd", "sd15", "tiny-sd", 64,
                   accelerators={"lcm-lora": "tiny-sd-lcm-lora"}),
        ModelEntry("tiny-sdxl", "builtin:tiny-sdxl", "sdxl", "tiny-sdxl", 64,
                   accelerators={"lcm-lora": "tiny-sdxl-lcm-lora"}),
        ModelEntry("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15", "sd15", 512,
                   accelerators={"lcm-lora": "lcm-lora-sdv1-5"}),
        ModelEntry("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", "sdxl", 1024,
                   accelerators={"lcm-lora": "lcm-lora-sdxl"}),
        ModelEntry("ssd-1b", "segmind/SSD-1B", "ssd-1b", "ssd-1b", 1024,
                   accelerators={"lcm-lora": "lcm-lora-ssd-1b"}),
    )
}

BUILTIN_ADAPTERS: dict[str, AdapterEntry] = {
    a.name: a
    for a in (
        AdapterEntry("tiny-sd-lcm-lora", "builtin:tiny-sd-lcm-lora", "tiny-sd", "accelerator", _TINY_LORA_FILE),
        AdapterEntry("tiny-sdxl-lcm-lora", "builtin:tiny-sdxl-lcm-lora", "tiny-sdxl", "accelerator", _TINY_LORA_FILE),
        AdapterEntry("tiny-sd-toy", "builtin:tiny-sd-toy", "tiny-sd", "style", _TINY_LORA_FILE),
        AdapterEntry("tiny-sd-ink", "builtin:tiny-sd-ink", "tiny-sd", "style", _TINY_LORA_FILE),
        AdapterEntry("tiny-sdxl-toy", "builtin:tiny-sdxl-toy", "tiny-sdxl", "style", _TINY_LORA_FILE),
        AdapterEntry("tiny-sdxl-ink", "builtin:tiny-sdxl-ink", "tiny-sdxl", "style", _TINY_LORA_FILE),
        AdapterEntry("lcm-lora-sdv1-5", "latent-consistency/lcm-lora-sdv1-5", "sd15", "accelerator"),
        AdapterEntry("lcm-lora-sdxl", "latent-consistency/lcm-lora-sdxl", "sdxl", "accelerator"),
        AdapterEntry("lcm-lora-ssd-1b", "latent-consistency/lcm-lora-ssd-1b", "ssd-1b", "accelerator"),
        AdapterEntry("toy-face-sdxl", "CiroN2022/toy-face", "sdxl", "style", "toy_face_sdxl.safetensors"),
    )
}

# builtin:NAME -> (tiny model it is built for, seed of its random weights); models have seed None
BUILTIN_BUILDS: dict[str, tuple[str, int | None]] = {
    "tiny-sd": ("tiny-sd", None),
    "tiny-sdxl": ("tiny-sdxl", None),
    "tiny-sd-lcm-lora": ("tiny-sd", 10),
    "tiny-sdxl-lcm-lora": ("tiny-sdxl", 11),
    "tiny-sd-toy": ("tiny-sd", 20),
    "tiny-sd-ink": ("tiny-sd", 21),
    "tiny-sdxl-toy": ("tiny-sdxl", 22),
    "tiny-sdxl-ink": ("tiny-sdxl", 23),
}
