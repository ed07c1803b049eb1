"""Adapter switch time and set_adapters cost, on the tiny models, through the worker's own
AdapterSet (the code path jobs take).

- switch: time to make a style stack active when its LoRA is resident (set_adapters only), when it
  was evicted but its state dict is in host RAM, and when it must be read from disk.
- set_adapters: time of one set_adapters call after 1, 10 and 50 adapters have been loaded into
  the pipeline, without a bound (diffusers keeps every adapter) and with the farm's bound (8).

    .venv/bin/python bench/adapters.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {"median_ms": round(statistics.median(samples), 3), "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
            "n": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "adapters.json"))
    args = parser.parse_args()

    from diffusers.utils import logging as diffusers_logging
    from safetensors.torch import load_file

    from engine.adapters import AdapterSet, HostStateDicts
    from engine.runner import Runner
    from engine.sources import resolve

    diffusers_logging.set_verbosity_error()
    cache = Path(os.environ.get("FARM_MODEL_CACHE") or tempfile.mkdtemp(prefix="farm-bench-models-"))
    runner = Runner(device="cpu", model_cache=cache)
    resident, _ = runner.pipeline(args.model)
    pipe = resident.pipe
    arch = runner.catalog.models[args.model].arch
    accel, toy, ink = f"{arch}-lcm-lora", f"{arch}-toy", f"{arch}-ink"

    # -- switch time: resident / host RAM / disk -----------------------------------------------
    def locate(name):
        return runner._locate_adapter(name)

    results: dict = {"benchmark": "adapters", "model": args.model, "repeats": args.repeats,
                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    ram = AdapterSet(pipe, locate, max_loaded=2, host=HostStateDicts())
    ram.activate([(accel, 1.0), (toy, 0.8)], accel)  # warm: both read once, toy now in host RAM
    resident_ms = ms(lambda: ram.activate([(accel, 1.0), (toy, 0.8)], accel), args.repeats)

    def from_ram():  # ink evicts toy (bound 2), then toy comes back from its host-RAM state dict
        ram.activate([(accel, 1.0), (ink, 0.8)], accel)
        started = time.perf_counter()
        ram.activate([(accel, 1.0), (toy, 0.8)], accel)
        return (time.perf_counter() - started) * 1000

    host_ms = [from_ram() for _ in range(args.repeats)]
    disk_set = AdapterSet(pipe, locate, max_loaded=2, host=HostStateDicts(max_bytes=0))  # nothing kept in RAM

    def from_disk():
        disk_set.activate([(accel, 1.0), (ink, 0.8)], accel)
        started = time.perf_counter()
        disk_set.activate([(accel, 1.0), (toy, 0.8)], accel)
        return (time.perf_counter() - started) * 1000

    pipe.unload_lora_weights()
    disk_ms = [from_disk() for _ in range(args.repeats)]
    results["switch"] = {"resident": summary(resident_ms), "host_ram": summary(host_ms), "disk": summary(disk_ms)}

    # -- set_adapters after N adapters loaded ---------------------------------------------------
    base_state = load_file(str(Path(resolve(f"builtin:{toy}", cache).path) / "pytorch_lora_weights.safetensors"))
    curve = {}
    for bound in (None, 8):
        pipe.unload_lora_weights()
        loaded: list[str] = []
        points = {}
        for count in range(1, 51):
            name = f"style{count}"
            pipe.load_lora_weights({k: v * (1 + count / 100) for k, v in base_state.items()}, adapter_name=name)
            loaded.append(name)
            if bound is not None and len(loaded) > bound:
                pipe.delete_adapters(loaded.pop(0))
            if count in (1, 10, 50):
                points[str(count)] = summary(ms(lambda name=name: pipe.set_adapters([name], adapter_weights=[0.8]),
                                                args.repeats))
        curve["unbounded" if bound is None else f"bounded_{bound}"] = points
    results["set_adapters_after_n_loaded"] = curve

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    from bench.plotting import save_lines

    save_lines(Path(args.out).with_suffix(".png"),
               {label: ([int(n) for n in points], [p["median_ms"] for p in points.values()])
                for label, points in curve.items()},
               xlabel="adapters loaded into the pipeline", ylabel="one set_adapters call (ms, median)",
               title=f"set_adapters cost, {args.model} (switch: resident {results['switch']['resident']['median_ms']} ms, "
                     f"RAM {results['switch']['host_ram']['median_ms']} ms, "
                     f"disk {results['switch']['disk']['median_ms']} ms)")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
