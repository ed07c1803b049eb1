"""Farm vs a warm Ray Data actor pool: images/s rendering the same images, side by side in one run.

The peer is Ray Data: ``ray.data.from_items`` of the seeds -> ``map_batches`` with a callable class
(one actor by default) that holds the same pipeline as farm_vs_loop's loop (tiny-sd, LCMScheduler,
the LCM-LoRA loaded unfused, 4 steps, guidance 1.0, 64x64, ``--threads`` torch threads), renders
each batch of 8 seeds in one ``pipe()`` call (a list of prompts, one generator per seed) and writes
every image as a PNG. The farm is timed as in farm_vs_loop: from ``farm submit`` to the last image
done in the ledger, its workers warm (a warm-up batch of 8 x workers x 2 images rendered first);
and through the library API from a warm client (``Farm.submit_plan`` in this process, as a script
submits: no CLI start-up, as the Ray driver is up before its pass), ``farm_api``.

Warm actors. Ray Data cannot keep an actor pool across executions: each execution plans its own
``ActorPoolMapOperator``, which starts the pool when the execution starts and drops the actors
(they exit) when it ends (ray/data/_internal/execution/operators/actor_pool_map_operator.py: ``start``,
``shutdown``). A warm-up pass through Ray Data therefore leaves nothing warm for the next one. So
every Ray Data round is one execution (a fresh pool, after one untimed warm-up execution) and is
timed two ways:

- ``ray_data_warm``: the headline peer, "once its actor was warm". Each actor's ``__init__`` loads
  the pipeline and renders one untimed warm-up batch of 8, then notes the time; Ray Data gives an
  actor work only once it is running, i.e. once ``__init__`` has returned (tasks are queued to
  running actors only), so the round is timed from the first actor ready to the last row back
  in the driver. Nothing rendered in the round is left out (no "from the first batch back").
- ``ray_data_cold``: the whole execution, ``take_all()``, actor start included (process, imports,
  pipeline load, warm-up batch): what one Ray Data job costs.

And, as a cross-check of the warm number that needs no clock taken inside the actors, a plain Ray
actor pool (``ray.util.ActorPool`` of the same class, same batches of 8) started once, warmed with
an untimed pass of 8 x actors x 2 images and reused in every round: ``ray_actors_warm``.

Rounds alternate Ray Data / plain actors / farm (reversed every other round) so machine noise
hits all of them; every pass renders a fresh seed range (nothing repeated across rounds, passes or
peers) and the farm renders every image of its range (farm_images_per_s checks). Ray runs on this
machine's cores (``ray.init(num_cpus=os.cpu_count())``): each Ray Data pool claims them all, the
plain pool none (it stays up, idle, beside them; the torch threads are set explicitly either way).
Ray's workers run at nice 0 like the farm's (Ray's default, 15, lets any other process starve an
actor's OpenMP threads: a 2-thread render then slows down many times over on a busy machine).
After a Ray Data pass (untimed) the benchmark waits for its actors to exit (a second or more of
teardown), so the next pass does not pay for it. Ray stays up, idle, during the farm's passes and the farm's workers
stay up, idle, during Ray's.

    .venv/bin/python bench/ray_data.py --images 1024 --rounds 3 [--workers 2] [--actors 2] [--threads 1]

Equal deployment by default: as many Ray actors as farm workers, one torch thread each, both
writing PNGs with the farm's metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 8  # seeds per pipe() call, the farm's default micro-batch


class RenderActor:
    """The loop's pipeline in one actor: one ``pipe()`` call per batch of seeds, each image a PNG.

    Self-contained (its imports inside): Ray ships it by value to the actor processes."""

    def __init__(self, model_cache: str, out_dir: str, prompt: str, threads: int, warm_up: int = BATCH):
        import torch

        torch.set_num_threads(threads)
        from diffusers import LCMScheduler, StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        from engine.sources import resolve

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" in every actor's log
        pipe = StableDiffusionPipeline.from_pretrained(resolve("builtin:tiny-sd", Path(model_cache)).path,
                                                       safety_checker=None)
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        lora = resolve("builtin:tiny-sd-lcm-lora", Path(model_cache)).path
        pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="lcm")
        pipe.set_progress_bar_config(disable=True)
        self.torch, self.pipe, self.out_dir, self.prompt = torch, pipe, Path(out_dir), prompt
        self.render(list(range(warm_up)), prefix="warm-up-")  # untimed: first-call costs, a full batch's shapes
        self.ready = time.time()  # wall clock: compared with the driver's, same machine

    def render(self, seeds: list[int], prefix: str = "") -> list[str]:
        """One ``pipe()`` call; every image written with the metadata the farm writes (the A1111
        parameters text and the JSON job record, through the farm's own encoder): the same cost."""
        from engine.imaging import encode_png
        from farm.jobs.spec import direct_spec
        from farm.results.metadata import a1111_parameters, job_record, job_record_json

        images = self.pipe([self.prompt] * len(seeds), num_inference_steps=4, guidance_scale=1.0, width=64, height=64,
                           generator=[self.torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
        paths = []
        for seed, image in zip(seeds, images):
            path = self.out_dir / f"{prefix}{seed}.png"
            pixels = (image * 255).round().clip(0, 255).astype("uint8")
            record = job_record(direct_spec(model="tiny-sd", seed=seed, prompt=self.prompt), job_id=None, batch=None,
                                index=None, worker="ray", device="cpu", versions={})
            path.write_bytes(encode_png(pixels, a1111_parameters(record), job_record_json(record)))
            paths.append(str(path))
        return paths

    def __call__(self, batch: dict) -> dict:  # Ray Data's map_batches (numpy batches)
        import numpy as np

        seeds = [int(s) for s in batch["seed"]]
        paths = self.render(seeds)
        return {"seed": np.array(seeds), "path": np.array(paths), "ready": np.full(len(seeds), self.ready),
                "pid": np.full(len(seeds), os.getpid())}

    def seeds_rendered(self, seeds: list[int]) -> list[str]:  # the plain actor pool's call
        return self.render(seeds)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.05)


def check_written(paths, seeds: list[int]) -> None:
    if sorted(int(Path(p).stem) for p in paths) != sorted(seeds) or not all(Path(p).is_file() for p in paths):
        raise RuntimeError(f"Ray rendered {len(paths)} images, not the {len(seeds)} seeds asked for")


def ray_data_images_per_s(actor_kwargs: dict, seeds: list[int], actors: int, cpus: float) -> tuple:
    """One Ray Data execution (its own actor pool). Returns (warm, cold) images/s."""
    import ray.data

    wait_until(lambda: ray.available_resources().get("CPU", 0) >= cpus * actors, "Ray's CPUs to be free")
    dataset = ray.data.from_items([{"seed": s} for s in seeds]).map_batches(
        RenderActor, batch_size=BATCH, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus, fn_constructor_kwargs=actor_kwargs)
    started, started_wall = time.perf_counter(), time.time()
    rows = dataset.take_all()  # executes it: every batch rendered, every row back in the driver
    elapsed, ended_wall = time.perf_counter() - started, time.time()
    check_written([r["path"] for r in rows], seeds)
    first_ready = min(float(r["ready"]) for r in rows)
    if not started_wall < first_ready < ended_wall:
        raise RuntimeError("the Ray Data pool was not started by this execution")
    # the pool's actors are dropped at the end, then tear down (a second or more: torch, diffusers):
    # gone before the next pass, whichever side it is, so that it does not pay for them
    wait_until(lambda: not any(alive(int(pid)) for pid in {r["pid"] for r in rows}), "the Ray Data actors to exit")
    return len(seeds) / (ended_wall - first_ready), len(seeds) / elapsed


def ray_actors_images_per_s(pool, seeds: list[int]) -> float:
    batches = [seeds[i:i + BATCH] for i in range(0, len(seeds), BATCH)]
    started = time.perf_counter()
    paths = [p for done in pool.map_unordered(lambda actor, b: actor.seeds_rendered.remote(b), batches) for p in done]
    elapsed = time.perf_counter() - started
    check_written(paths, seeds)
    return len(seeds) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="farm workers")
    parser.add_argument("--actors", type=int, default=None,
                        help="Ray actors (default: the farm's workers, the same deployment)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per Ray actor (cpus // actors)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray_data.json"))
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    args.actors = args.actors or args.workers
    threads = args.threads or max(1, cpus // args.actors)
    on_term = lambda *_: sys.exit(143)  # a killed run still runs the finally blocks: farm down, ray.shutdown()
    signal.signal(signal.SIGTERM, on_term)

    from bench.farm_vs_loop import PROMPT, farm_api_images_per_s, farm_cli, farm_images_per_s
    from farm.api import Farm

    next_seed = 1_000_000  # every pass takes a fresh range: nothing is repeated, nothing reused

    def fresh(count: int) -> list[int]:
        nonlocal next_seed
        next_seed += count
        return list(range(next_seed - count, next_seed))

    work = Path(tempfile.mkdtemp(prefix="farm-bench-ray-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_MODEL_CACHE=str(work / "models"), HF_HUB_OFFLINE="1")
    ray_dir = work / "ray-images"
    ray_dir.mkdir()
    rates: dict[str, list[float]] = {"ray_data_warm": [], "ray_data_cold": [], "ray_actors_warm": [], "farm": [],
                                     "farm_api": []}
    farm_cli("up", "--workers", str(args.workers), env=env)
    client = Farm.connect(env)  # the warm client of the API passes (a script's)
    try:
        warm_up = fresh(BATCH * args.workers * 2)  # every worker loads its pipeline and renders a few batches
        farm_api_images_per_s(client, len(warm_up), warm_up[0], prompt="warm-up")  # the client warm too

        import ray

        started = time.perf_counter()
        quiet = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                 "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        os.environ["RAY_worker_niceness"] = "0"  # Ray's default 15 starves its actors' OpenMP threads under load
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), **quiet}})
        ray_start_s = time.perf_counter() - started
        signal.signal(signal.SIGTERM, on_term)  # again: Ray's core worker put its own (it aborts the driver)
        try:
            import ray.data
            from ray.util import ActorPool

            logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per execution
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            actor_kwargs = {"model_cache": env["FARM_MODEL_CACHE"], "out_dir": str(ray_dir), "prompt": PROMPT,
                            "threads": threads}
            actor_cpus = cpus / args.actors  # the Ray Data pool owns the machine's logical CPUs
            # the plain pool claims none: it stays up, idle, while Ray Data's pools run (its threads are set anyway)
            plain = [ray.remote(num_cpus=0)(RenderActor).remote(**actor_kwargs) for _ in range(args.actors)]
            pool = ActorPool(plain)
            ray_actors_images_per_s(pool, fresh(BATCH * args.actors * 2))  # untimed warm-up pass
            ray_data_images_per_s(actor_kwargs, fresh(BATCH * args.actors * 2), args.actors, actor_cpus)

            def ray_data_pass():
                warm, cold = ray_data_images_per_s(actor_kwargs, fresh(args.images), args.actors, actor_cpus)
                rates["ray_data_warm"].append(warm)
                rates["ray_data_cold"].append(cold)

            passes = [ray_data_pass,
                      lambda: rates["ray_actors_warm"].append(ray_actors_images_per_s(pool, fresh(args.images))),
                      lambda: rates["farm"].append(farm_images_per_s(env, args.images, fresh(args.images)[0])),
                      lambda: rates["farm_api"].append(farm_api_images_per_s(client, args.images,
                                                                             fresh(args.images)[0]))]
            for round_ in range(args.rounds):
                for one_pass in passes if round_ % 2 == 0 else passes[::-1]:  # neither side always goes first
                    one_pass()
            ray_version = ray.__version__
        finally:
            ray.shutdown()
    finally:
        client.close()
        farm_cli("down", env=env)
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "benchmark": "ray_data",
        "model": "tiny-sd", "recipe": "lcm-lora", "steps": 4, "size": "64x64", "pngs_written": True,
        "images_per_round": args.images, "rounds": args.rounds, "batch": BATCH,
        "farm_workers": args.workers, "farm_torch_threads_per_worker": max(1, cpus // args.workers),
        "ray_actors": args.actors, "ray_torch_threads_per_actor": threads, "ray_version": ray_version,
        "ray_init_s": round(ray_start_s, 2), "ray_worker_niceness": 0,
        "fresh_seeds_per_pass": True, "farm_rendered_every_image": True,
        "machine": {"cpus": cpus, "platform": platform.platform()},
        **{f"{name}_images_per_s": [round(r, 2) for r in values] for name, values in rates.items()},
        **{f"{name}_images_per_s_median": round(medians[name], 2) for name in rates},
        "ratio_farm_over_ray": round(medians["farm"] / medians["ray_data_warm"], 3),
        "ratio_farm_over_ray_actors": round(medians["farm"] / medians["ray_actors_warm"], 3),
        "ratio_farm_over_ray_data_cold": round(medians["farm"] / medians["ray_data_cold"], 3),
        "ratio_farm_api_over_ray": round(medians["farm_api"] / medians["ray_data_warm"], 3),
        "ratio_farm_api_over_ray_actors": round(medians["farm_api"] / medians["ray_actors_warm"], 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from bench.plotting import save_lines

    rounds = list(range(1, args.rounds + 1))
    save_lines(Path(args.out).with_suffix(".png"),
               {"farm (submit -> workers -> store -> ledger)": (rounds, rates["farm"]),
                "farm, library API from a warm client": (rounds, rates["farm_api"]),
                "Ray Data, from its actor warm": (rounds, rates["ray_data_warm"]),
                "Ray Data, actor start included": (rounds, rates["ray_data_cold"]),
                "plain Ray actors, warm pool": (rounds, rates["ray_actors_warm"])},
               xlabel="round (alternating, same machine)", ylabel="images/s", log_x=False,
               title=f"tiny-sd, 4 steps, 64 px, batch 8: farm / Ray Data = {result['ratio_farm_over_ray']}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
