"""LoRA adapters attached to one resident pipeline, through peft (diffusers' LoRA API).

- LoRA files come in the diffusers/peft layout or Kohya's (A1111, Civitai); both load through
  diffusers' ``load_lora_weights``, which converts Kohya keys itself (``_loadable`` only respells
  UNet module names it would otherwise map wrong).
- Adapters stay loaded between micro-batches; switching stacks is a ``set_adapters`` call, never a
  reload of the base model.
- Loaded adapters are bounded by count and by bytes; the least recently used one that the current
  stack does not need is deleted from the pipeline (``delete_adapters``), so its memory returns.
- State dicts of adapters read from files are kept in host RAM (bounded by bytes) so re-attaching
  an evicted adapter does not touch the disk.
- Optionally the stack's accelerator (LCM-LoRA, Lightning, ...) is fused into the base weights
  while it stays the same: the per-layer LoRA detour disappears from every denoising step. The
  original weights of the layers it touches are kept in host RAM and copied back exactly when the
  accelerator changes, so unfusing never drifts.
- With a compiled UNet the whole stack is fused (``fuse_stack``): peft's LoRA layers, their
  adapter names and float scales are what torch.compile's guards see, so every switch or weight
  change would compile the UNet again (seconds to a minute); fused weights are only parameters,
  changed in place, and the graph stays the same.

Bounding the number of loaded adapters also bounds the cost of ``set_adapters``, which walks every
LoRA layer for every adapter ever loaded into the pipeline.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from engine.sources import Location

GiB = 1 << 30
PEFT_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")  # transformer: FLUX, SD3


@dataclass
class HostStateDicts:
    """LoRA state dicts in host RAM, least recently used dropped beyond ``max_bytes``."""

    max_bytes: int = 4 * GiB

    def __post_init__(self):
        self.entries: OrderedDict[str, tuple[dict, int]] = OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.entries.values())

    def get(self, key: str) -> dict | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key][0]

    def put(self, key: str, state: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in state.values())
        if size > self.max_bytes:
            return
        self.entries[key] = (state, size)
        self.entries.move_to_end(key)
        while self.bytes > self.max_bytes:
            self.entries.popitem(last=False)


def _weight_file(location: Location, weight_name: str | None):
    """The local .safetensors file of an adapter, when there is one to read into host RAM."""
    from pathlib import Path

    path = Path(location.path)
    if location.single_file:
        return path
    if location.is_hub:
        return None  # diffusers resolves hub files itself (and caches them on disk)
    candidate = path / (weight_name or "pytorch_lora_weights.safetensors")
    return candidate if candidate.is_file() else None


def _loadable(pipe, state: dict) -> dict:
    """A LoRA state dict as this pipeline's ``load_lora_weights`` converts it right.

    Kohya files spell UNet modules with diffusers names or original (LDM/SGM) names. diffusers
    maps original names only on SDXL pipelines (its SD1.5 path leaves them unmapped), and there
    maps diffusers-spelt ``add_embedding`` wrongly; so Kohya keys are respelt to the original
    names on SDXL and to the diffusers names elsewhere (farm.models.loras), and diffusers converts the rest.
    """
    from farm.models.loras import KOHYA_PREFIXES, kohya_respelling

    if not state or not all(key.startswith(tuple(KOHYA_PREFIXES)) for key in state):
        return state  # the diffusers/peft layout loads as it is
    if getattr(pipe, "unet", None) is None:
        return state  # FLUX: diffusers converts Kohya's (BFL-named) keys itself
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    respelt = kohya_respelling(state, dict(pipe.unet.config),
                               original=isinstance(pipe, StableDiffusionXLLoraLoaderMixin))
    return {respelt.get(key, key): tensor for key, tensor in state.items()} if respelt else state


def _peft_modules(pipe):
    """(component name, module name, module) of every peft LoRA layer in the pipeline."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in PEFT_COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer):
                yield component, name, module


class AdapterSet:
    def __init__(self, pipe, locate: Callable[[str], tuple[Location, str | None]], *, max_loaded: int = 8,
                 max_bytes: int = 2 * GiB, host: HostStateDicts | None = None, fuse: bool = False,
                 fuse_stack: bool = False):
        self.pipe = pipe
        self.locate = locate  # adapter name -> (where its weights are, weight file name)
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes
        self.host = host if host is not None else HostStateDicts()
        self.fuse = fuse
        self.fuse_stack = fuse_stack  # fold every adapter of the stack, not only the accelerator
        self.loaded: OrderedDict[str, int] = OrderedDict()  # name -> bytes of its LoRA parameters
        self.enabled = True
        self.fused: tuple[tuple[str, float], ...] | None = None  # (name, weight) pairs folded into the weights
        # (component, module) -> its original weight in host RAM, kept across switches: the base
        # weights are the same after every unfuse, so each layer is copied off the device once
        self._originals: dict[tuple[str, str], object] = {}
        self._fused_layers: list[tuple[str, str]] = []  # the layers the fused stack changed
        self.stats = {"loads_disk": 0, "loads_host": 0, "evictions": 0, "fuses": 0, "unfuses": 0}
        self.digests: dict[str, str | None] = {}  # sha256 of each adapter's weight file, for the record

    # -- loading and eviction -------------------------------------------------------------------
    def _load(self, name: str) -> None:
        state = self.host.get(name)
        if state is not None:
            self.stats["loads_host"] += 1
            self.pipe.load_lora_weights(dict(state), adapter_name=name)  # diffusers pops keys: pass a copy
        else:
            location, weight_name = self.locate(name)
            path = _weight_file(location, weight_name)
            self.stats["loads_disk"] += 1
            if path is not None:
                import hashlib

                data = path.read_bytes()
                self.digests[name] = hashlib.sha256(data).hexdigest()
                from safetensors.torch import load as load_bytes

                state = _loadable(self.pipe, load_bytes(data))
                self.host.put(name, state)
                self.pipe.load_lora_weights(dict(state), adapter_name=name)
            else:
                if weight_name and not weight_name.endswith(".safetensors"):
                    from farm.errors import InputError

                    raise InputError("adapter", f"{name}: only .safetensors LoRA files are loaded, not {weight_name}")
                kwargs = {"weight_name": weight_name} if weight_name else {}
                self.pipe.load_lora_weights(location.path, adapter_name=name, use_safetensors=True, **kwargs)
                self.digests.setdefault(name, None)  # a hub file: diffusers resolved it
        self.loaded[name] = self._adapter_bytes(name)

    def _adapter_bytes(self, name: str) -> int:
        total = 0
        for _, _, module in _peft_modules(self.pipe):
            for attr in ("lora_A", "lora_B"):
                container = getattr(module, attr, None)
                if container is not None and name in container:
                    total += sum(p.numel() * p.element_size() for p in container[name].parameters())
        return total

    def _evict(self, keep: set[str]) -> None:
        while len(self.loaded) > self.max_loaded or sum(self.loaded.values()) > self.max_bytes:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                return
            self.pipe.delete_adapters(victim)
            del self.loaded[victim]
            self.stats["evictions"] += 1

    # -- fusing ---------------------------------------------------------------------------------
    def _fuse(self, stack: list[tuple[str, float]]) -> None:
        """Fold the ``stack``'s adapters at their weights into the base weights and drop every
        LoRA layer (adapters needed later reload from host RAM)."""
        names = [name for name, _ in stack]
        for name in names:
            if name not in self.loaded:
                self._load(name)
        self._fused_layers = []
        for component, module_name, module in _peft_modules(self.pipe):
            if any(name in getattr(module, "lora_A", {}) for name in names):
                key = (component, module_name)
                if key not in self._originals:  # nothing is fused now: the weight is the original
                    self._originals[key] = module.get_base_layer().weight.detach().to("cpu", copy=True)
                self._fused_layers.append(key)
        self.pipe.set_adapters(names, adapter_weights=[float(w) for _, w in stack])
        loadable = getattr(self.pipe, "_lora_loadable_modules", PEFT_COMPONENTS)  # FLUX's T5 takes no LoRA
        components = [c for c in PEFT_COMPONENTS if getattr(self.pipe, c, None) is not None and c in loadable]
        self.pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=names)
        self.pipe.unload_lora_weights()
        self.loaded.clear()
        self.enabled = True
        self.fused = tuple((name, float(w)) for name, w in stack)
        self.stats["fuses"] += 1

    def _unfuse(self) -> None:
        """Put the original weights back, bit for bit."""
        import torch

        with torch.no_grad():
            for component, module_name in self._fused_layers:
                original = self._originals[(component, module_name)]
                module = getattr(self.pipe, component).get_submodule(module_name)
                base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
                base.weight.copy_(original.to(base.weight.device, base.weight.dtype))
        self._fused_layers = []
        self.fused = None
        self.stats["unfuses"] += 1

    # -- switching stacks -----------------------------------------------------------------------
    def activate(self, stack: list[tuple[str, float]], accelerator: str | None = None) -> float:
        """Make ``stack`` [(name, weight)] the active adapters; ``accelerator`` names the stack's
        accelerator (fused when fusing is on). Returns ms spent loading and switching."""
        started = time.perf_counter()
        if self.fuse_stack:
            wanted = tuple((n, float(w)) for n, w in stack)
            if self.fused != wanted:
                if self.fused:
                    self._unfuse()
                if wanted:
                    self._fuse(list(wanted))
            return (time.perf_counter() - started) * 1000
        if self.fuse and accelerator is not None:
            weight = float(dict(stack)[accelerator])
            if self.fused != ((accelerator, weight),):
                if self.fused:
                    self._unfuse()
                self._fuse([(accelerator, weight)])
            stack = [(n, w) for n, w in stack if n != accelerator]
        elif self.fused:
            self._unfuse()
        names = [name for name, _ in stack]
        for name in names:
            if name in self.loaded:
                self.loaded.move_to_end(name)
            else:
                self._load(name)
        self._evict(keep=set(names))
        if stack:
            if not self.enabled:
                self.pipe.enable_lora()
                self.enabled = True
            self.pipe.set_adapters(names, adapter_weights=[float(w) for _, w in stack])
        elif self.loaded and self.enabled:
            self.pipe.disable_lora()
            self.enabled = False
        return (time.perf_counter() - started) * 1000

    @property
    def resident(self) -> list[str]:
        fused = [f"{name}(fused)" for name, _ in self.fused or ()]
        return fused + list(self.loaded)
