"""torch.compile in the worker: warm-up per shape, steady-state speed against eager, and how many
graphs get compiled again when the adapter stack switches (the farm's normal traffic).

Runs the farm's Runner (FARM_COMPILE's code path) on tiny-sd. On a CPU inductor compiles C++
kernels (gcc), on CUDA Triton kernels; the recompile counts do not depend on the backend: they
come from Dynamo's guards, which see the same Python objects either way.

    .venv/bin/python bench/compile.py [--device cpu|cuda] [--batch 4] [--repeats 5]
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

# the traffic a worker sees: the accelerator alone, then style LoRAs on top at various weights
STACKS = [
    ("accelerator only", []),
    ("+ toy 0.8", [("tiny-sd-toy", 0.8)]),
    ("+ toy 0.5 (weight change)", [("tiny-sd-toy", 0.5)]),
    ("+ ink 0.8 (other style)", [("tiny-sd-ink", 0.8)]),
    ("+ toy 0.5 + ink 0.3 (two styles)", [("tiny-sd-toy", 0.5), ("tiny-sd-ink", 0.3)]),
    ("accelerator only again", []),
    ("+ toy 0.8 again", [("tiny-sd-toy", 0.8)]),
]


def jobs(batch: int, styles: list, seed: int = 0) -> list:
    from farm.jobs.spec import direct_spec

    adapters = [("tiny-sd-lcm-lora", 1.0, "accelerator")] + [(n, w, "style") for n, w in styles]
    return [direct_spec(prompt=f"a lighthouse {i}", seed=seed + i, model="tiny-sd", adapters=adapters)
            for i in range(batch)]


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed(runner, batch_jobs) -> float:
    started = time.perf_counter()
    runner.render(batch_jobs)
    return (time.perf_counter() - started) * 1000


def run(device: str, compile: bool, batch: int, repeats: int, cache: Path, fuse: bool, fuse_stack: bool) -> dict:
    import torch

    from engine.runner import Runner

    torch._dynamo.reset()
    runner = Runner(device=device, model_cache=cache, compile=compile, fuse=fuse)
    # a compiled runner fuses the whole stack; an eager one can too, to tell fusing from compiling
    runner.pipeline("tiny-sd")[0].adapters.fuse_stack = fuse_stack
    out = {"compile": compile, "fuse_stack": fuse_stack, "switches": []}
    for label, styles in STACKS:
        before = graphs()
        first = timed(runner, jobs(batch, styles))
        steady = [timed(runner, jobs(batch, styles, seed=100 * r)) for r in range(repeats)]
        out["switches"].append({"stack": label, "first_call_ms": round(first, 1),
                                "steady_ms_median": round(statistics.median(steady), 1),
                                "graphs_compiled": graphs() - before})
        print(json.dumps({"compile": compile, "fuse_stack": fuse_stack, **out["switches"][-1]}), flush=True)
    out["graphs_compiled_total"] = graphs()
    out["recompiles_after_warmup"] = sum(s["graphs_compiled"] for s in out["switches"][1:])
    return out


def label(r: dict) -> str:
    return ("compiled" if r["compile"] else "eager") + (", stack fused" if r["fuse_stack"] else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile.json"))
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="farm-compile-"))
    fuse = args.device.startswith("cuda")  # the worker's default
    runs = [run(args.device, False, args.batch, args.repeats, cache, fuse, False),
            run(args.device, False, args.batch, args.repeats, cache, fuse, True),
            run(args.device, True, args.batch, args.repeats, cache, fuse, True)]
    eager, eager_fused, compiled = runs
    result = {
        "benchmark": "compile", "model": "tiny-sd", "device": args.device, "batch": args.batch,
        "repeats": args.repeats, "runs": runs,
        "speedup_steady_compiled_over_eager_fused": {
            s["stack"]: round(e["steady_ms_median"] / s["steady_ms_median"], 3)
            for e, s in zip(eager_fused["switches"], compiled["switches"])},
        "speedup_steady_compiled_over_eager_unfused": {
            s["stack"]: round(e["steady_ms_median"] / s["steady_ms_median"], 3)
            for e, s in zip(eager["switches"], compiled["switches"])},
        "recompiles_on_adapter_switches": compiled["recompiles_after_warmup"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    xs = list(range(1, len(STACKS) + 1))
    save_lines(Path(args.out).with_suffix(".png"),
               {f"{label(r)} (first call)": (xs, [s["first_call_ms"] for s in r["switches"]]) for r in runs}
               | {f"{label(r)} (steady)": (xs, [s["steady_ms_median"] for s in r["switches"]]) for r in runs},
               xlabel="adapter stack switch (see JSON for the stacks)", ylabel="ms per call", log_x=False,
               title=f"torch.compile across adapter switches, tiny-sd, {args.device}, batch {args.batch}")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
