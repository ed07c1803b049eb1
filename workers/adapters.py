"""LoRA adapters attached to one resident pipeline, through peft (diffusers' LoRA API).

Adapters stay loaded between micro-batches; activating a stack is a ``set_adapters`` call, not a
reload. The least recently used adapter is deleted from the pipeline beyond ``max_loaded``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from workers.sources import Location


class AdapterSet:
    def __init__(self, pipe, locate: Callable[[str], tuple[Location, str | None]], max_loaded: int = 16):
        self.pipe = pipe
        self.locate = locate  # adapter name -> (where its weights are, weight file name)
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.enabled = True

    def activate(self, stack: list[tuple[str, float]]) -> float:
        """Make ``stack`` (name, weight) the active adapters; return ms spent loading weights."""
        load_ms = 0.0
        names = [name for name, _ in stack]
        for name in names:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            started = time.perf_counter()
            location, weight_name = self.locate(name)
            kwargs = {"weight_name": weight_name} if weight_name else {}
            self.pipe.load_lora_weights(location.path, adapter_name=name, **kwargs)
            self.loaded[name] = None
            load_ms += (time.perf_counter() - started) * 1000
        self._evict(keep=set(names))
        if stack:
            if not self.enabled:
                self.pipe.enable_lora()
                self.enabled = True
            self.pipe.set_adapters(names, adapter_weights=[float(w) for _, w in stack])
        elif self.loaded and self.enabled:
            self.pipe.disable_lora()
            self.enabled = False
        return load_ms

    def _evict(self, keep: set[str]) -> None:
        while len(self.loaded) > self.max_loaded:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                return
            self.pipe.delete_adapters(victim)
            del self.loaded[victim]

    @property
    def resident(self) -> list[str]:
        return list(self.loaded)
