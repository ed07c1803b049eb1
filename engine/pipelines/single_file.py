"""Single-file checkpoints (the original LDM key layout that A1111 and Civitai share), loaded offline.

``from_single_file`` takes the weights from the file but the component configs from a diffusers
directory; without ``config=`` it asks the hub for the family's repository. So every load here
passes ``config=`` a local directory and ``local_files_only=True``, whatever ``HF_HUB_OFFLINE``
says. From that directory diffusers 0.42 reads ``model_index.json``, ``unet/config.json``,
``vae/config.json``, ``text_encoder*/config.json``, ``scheduler/scheduler_config.json`` and the
tokenizer folders (unless the tokenizers are passed in), and no weights.

The farm ships those configs for the real families (``engine/configs/<arch>/``, the published
SD1.5, SDXL and SSD-1B ones); a tiny arch's config is its built model's own directory.
"""

from __future__ import annotations

from pathlib import Path

from farm.errors import InputError
from farm.models.catalog import TINY_ARCHS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# One copy of CLIP's BPE vocabulary (openai/clip-vit-large-patch14's vocab.json and merges.txt,
# which SD1.5 and both SDXL encoders share) instead of one per tokenizer folder of every family.
CLIP_TOKENIZER = CONFIGS / "clip-tokenizer"
TOKENIZERS = ("tokenizer", "tokenizer_2")


def config_dir(arch: str, model_cache: str | Path | None) -> Path:
    """The diffusers config directory a single file of ``arch`` loads with."""
    if arch in TINY_ARCHS:
        from engine.sources import resolve

        if model_cache is None:
            raise ValueError(f"a {arch} config is built into the model cache: pass model_cache")
        return Path(resolve(f"builtin:{arch}", Path(model_cache)).path)  # built once, then cached
    directory = CONFIGS / arch
    if not (directory / "model_index.json").is_file():
        raise InputError("arch", f"no single-file config for {arch!r} (expected {directory})")
    return directory


def tokenizers(config: Path) -> dict:
    """Tokenizers for the folders of ``config`` that hold only their settings (the shipped ones):
    built from the shared CLIP vocabulary. A folder with its own vocabulary is left to diffusers."""
    from transformers import CLIPTokenizer

    out = {}
    for name in TOKENIZERS:
        folder = config / name
        if folder.is_dir() and not any((folder / f).exists() for f in ("vocab.json", "tokenizer.json")):
            out[name] = CLIPTokenizer.from_pretrained(
                str(folder), vocab=str(CLIP_TOKENIZER / "vocab.json"), merges=str(CLIP_TOKENIZER / "merges.txt"),
                local_files_only=True,
            )
    return out


def load(pipeline_class, path: str, *, arch: str, model_cache: str | Path | None, dtype, **components):
    """``pipeline_class.from_single_file`` with the arch's local config; nothing is fetched."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    config = config_dir(arch, model_cache)
    try:
        pipe = pipeline_class.from_single_file(
            path, config=str(config), local_files_only=True, dtype=dtype, **tokenizers(config), **components
        )
    except (SingleFileComponentError, KeyError, ValueError) as exc:
        # a file that passed `farm models add` but does not fit the arch's config (shapes, keys)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError("model", f"{path}: does not load as a {arch} checkpoint: {first}") from None
    check_loaded(pipe, path)
    return pipe


def check_loaded(pipe, path: str) -> None:
    """Every weight on a real device. A tensor the checkpoint did not fill stays on the meta device
    (diffusers builds the model empty, then loads what it finds), and would fail at the first
    render with an unrelated-looking error, or not at all until it is moved."""
    import torch

    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        tensors = list(component.named_parameters()) + list(component.named_buffers())
        empty = [n for n, t in tensors if t.device.type == "meta"]
        if empty:
            more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
            raise InputError("model", f"{path}: {name}.{empty[0]}{more} not in the checkpoint (left unloaded, "
                                      "on the meta device): the file does not match its architecture's config")
