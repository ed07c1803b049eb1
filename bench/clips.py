"""Clips (issue 27): the farm against a plain AnimateDiffPipeline loop, like for like, and where the time goes.

On tiny-sd with its tiny motion module (LCM-LoRA, LCMScheduler, 4 steps, 64 px, guidance 1), the
same clips (prompts x seeds, FRAMES frames each) go through

- the loop (the peer): diffusers' ``AnimateDiffPipeline`` made once (model + ``MotionAdapter``,
  LCM-LoRA loaded), called on micro-batches of ``--micro-batch`` clips (a list of generators, one
  seed per clip: the farm's batching), every clip written as the farm delivers it: a lossless
  animated WebP through the farm's encoder with the A1111 ``parameters`` text and the JSON job
  record inside, put into a ``file://`` store (the farm's default store);
- the farm: ``Farm.submit_plan`` from a warm client -> Redis -> ``--workers`` Celery workers
  (micro-batches of the same size) -> WebP with metadata -> the same kind of store -> ledger,
  timed until ``Farm.wait`` returns (every clip stored and recorded);
- context, not a peer: the farm's engine alone (``Runner.render`` + the same encoder and store,
  inline), which shows what the farm's queue, ledger and background storing cost or save.

Like for like: the same deployment on each side, ``--workers`` processes with the same torch
threads each (the farm's rule for CPU workers: the cores shared out, set explicitly through
FARM_TORCH_THREADS and ``torch.set_num_threads``): the farm's workers, and as many child processes
each running the loop and the engine on its contiguous share of the clips; the bench process
only submits and waits. All warm; the same seeds on every side, fresh ones every round (the farm
would reuse a repeated seed's clip by digest and measure nothing: checked); the order of the sides
rotates each round so machine noise hits all of them. The premise, checked every round for every
clip: the farm's frames match the engine's exactly (the same code, batch-invariant) and the
loop's within ``TOLERANCE`` (the farm computes small products row by row for batch invariance,
engine.invariance: a level here and there; a different clip would differ by tens of levels on
average).

Each side's time is split into denoise (text encoding + the pipeline's loop to latents), VAE
decode of every frame, and encode (WebP + metadata, store): the farm's from its attempts'
per-stage timings (its encoding overlaps the next micro-batch), the others measured around the
same calls.

    .venv/bin/python bench/clips.py --clips 16 --frames 16 --rounds 4 [--workers 2]
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
PROMPTS = ("a red circle", "a blue square", "a yellow triangle", "a green circle")
STEPS, GUIDANCE, SIZE, FPS = 4, 1.0, 64, 8
TOLERANCE = {"max_levels": 2, "mean_levels": 0.05}  # farm vs loop, per clip
SIDES = ("loop", "engine", "farm")


def clip_specs(clips: list[tuple[str, int]], frames: int) -> list:
    from farm.jobs.spec import Catalog, JobRequest, resolve_job

    return [resolve_job(JobRequest(prompt=p, seed=s, kind="clip", frames=frames, fps=FPS, steps=STEPS,
                                   guidance=GUIDANCE), Catalog(), "tiny-sd") for p, s in clips]


def deliver(store, prefix: str, spec, pixels, worker: str, device: str) -> None:
    """A clip as the farm delivers it: its WebP with the parameters text and the job record, stored."""
    from engine.clips import encode_clip
    from farm.results.metadata import a1111_parameters, job_record, job_record_json

    record = job_record(spec, job_id=None, batch=None, index=None, worker=worker, device=device, versions={})
    data = encode_clip(pixels, FPS, "webp", a1111_parameters(record), job_record_json(record))
    store.put(f"{prefix}/{spec.seed}.webp", data, "image/webp")


class Loop:
    """The plain diffusers way: one AnimateDiffPipeline, a micro-batch of clips per call."""

    def __init__(self, model_cache: Path, store, frames: int, device: str):
        from diffusers import AnimateDiffPipeline, LCMScheduler, MotionAdapter

        from engine.sources import resolve

        adapter = MotionAdapter.from_pretrained(resolve("builtin:tiny-sd-motion", model_cache).path)
        self.pipe = AnimateDiffPipeline.from_pretrained(resolve("builtin:tiny-sd", model_cache).path,
                                                        motion_adapter=adapter)
        self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
        self.pipe.load_lora_weights(resolve("builtin:tiny-sd-lcm-lora", model_cache).path,
                                    weight_name="pytorch_lora_weights.safetensors", adapter_name="lcm")
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(device)
        self.device, self.store, self.frames = device, store, frames
        self.stages = {"denoise": 0.0, "vae_decode": 0.0, "encode": 0.0}

    def call(self, specs: list, prefix: str) -> None:
        import torch

        started = time.perf_counter()
        latents = self.pipe([s.prompt for s in specs], num_frames=self.frames, height=SIZE, width=SIZE,
                            num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent",
                            generator=[torch.Generator("cpu").manual_seed(s.seed) for s in specs]).frames
        _sync(self.device)
        denoised = time.perf_counter()
        with torch.no_grad():  # as the pipeline decodes inside its call (outside it, autograd would record)
            video = self.pipe.decode_latents(latents, decode_chunk_size=self.frames)  # (clips, 3, F, H, W)
            frames = ((video / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        decoded = time.perf_counter()
        for spec, clip in zip(specs, frames):
            deliver(self.store, prefix, spec, clip, "loop", self.device)
        self.stages["denoise"] += denoised - started
        self.stages["vae_decode"] += decoded - denoised
        self.stages["encode"] += time.perf_counter() - decoded


class Engine:
    """The farm's render engine alone: ``Runner.render`` on the same micro-batches, each clip
    delivered inline as the loop delivers it (no queue, no ledger, no background storing)."""

    def __init__(self, model_cache: Path, store, device: str):
        from engine.runner import Runner

        self.runner = Runner(device=device, model_cache=model_cache)
        self.device, self.store = device, store
        self.stages = {"denoise": 0.0, "vae_decode": 0.0, "encode": 0.0}

    def call(self, specs: list, prefix: str) -> None:
        rendered = self.runner.render(specs)
        self.stages["denoise"] += (rendered.timings["text_encode_ms"] + rendered.timings["denoise_ms"]) / 1000
        self.stages["vae_decode"] += rendered.timings["vae_decode_ms"] / 1000
        encoding = time.perf_counter()
        for spec, pixels in zip(specs, rendered.pixels):
            deliver(self.store, prefix, spec, pixels, "engine", self.device)
        self.stages["encode"] += time.perf_counter() - encoding


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peer_process(model_cache: str, store_url: str, frames: int, device: str, threads: int, requests, replies):
    """The loop and the engine in one process with a farm worker's torch threads; requests are
    (side, clips, micro_batch, prefix), each answered with the stages' seconds."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from engine.quiet import quiet_libraries
    from farm.storage import open_store

    quiet_libraries()
    store = open_store(store_url)
    peers = {"loop": Loop(Path(model_cache), store, frames, device), "engine": Engine(Path(model_cache), store, device)}
    for name, peer in peers.items():  # warm: a micro-batch each, untimed
        peer.call(clip_specs([(PROMPTS[0], 1)], frames), f"warm-{name}")
    replies.put(torch.get_num_threads())
    while (request := requests.get()) is not None:
        side, clips, micro_batch, prefix = request
        peer = peers[side]
        peer.stages = dict.fromkeys(peer.stages, 0.0)
        specs = clip_specs(clips, frames)
        for i in range(0, len(specs), micro_batch):
            peer.call(specs[i:i + micro_batch], prefix)
        replies.put(dict(peer.stages))


class Peers:
    """``processes`` warm children; ``run`` splits the clips into contiguous shares, one each."""

    def __init__(self, processes: int, model_cache: str, store_url: str, frames: int, threads: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.requests = [context.Queue() for _ in range(processes)]
        self.replies = context.Queue()
        self.procs = [context.Process(target=peer_process, daemon=True,
                                      args=(model_cache, store_url, frames, "cpu", threads, q, self.replies))
                      for q in self.requests]
        for proc in self.procs:
            proc.start()
        self.threads = [self.replies.get(timeout=600) for _ in self.procs]

    def run(self, side: str, clips: list[tuple[str, int]], micro_batch: int) -> tuple[float, dict]:
        share = -(-len(clips) // len(self.procs))
        started = time.perf_counter()
        for i, q in enumerate(self.requests):
            q.put((side, clips[i * share:(i + 1) * share], micro_batch, side))
        stages = [self.replies.get(timeout=600) for _ in self.requests]
        elapsed = time.perf_counter() - started
        return elapsed, {k: sum(s[k] for s in stages) for k in stages[0]}

    def close(self) -> None:
        for q in self.requests:
            q.put(None)
        for proc in self.procs:
            proc.join(30)


def farm_round(client, work: Path, clips: list[tuple[str, int]], frames: int) -> tuple[float, dict, list]:
    """The clips as one batch from a warm client, until ``wait`` returns: seconds, stages, views."""
    rows = work / f"clips-{clips[0][1]}.jsonl"  # one row per clip: its prompt, its seed
    rows.write_text("".join(json.dumps({"prompt": p, "seed": s}) + "\n" for p, s in clips))
    planned = client.plan(file=str(rows), model="tiny-sd", kind="clip", frames=frames, fps=FPS, steps=STEPS,
                          guidance=GUIDANCE)
    started = time.perf_counter()
    submitted = client.submit_plan(planned)
    if submitted.to_render != len(clips):  # the premise: every clip of the round is rendered
        raise RuntimeError(f"the farm would reuse {submitted.reused} of {len(clips)} clips: seeds repeated")
    counts = client.wait(submitted.batch, timeout=600)
    elapsed = time.perf_counter() - started
    views = client.jobs(submitted.batch)
    if counts["succeeded"] != len(clips) or any(not v.spec.clip for v in views):
        raise RuntimeError(f"the farm did not render every clip: {counts}")
    # per-stage timings are per clip (a micro-batch's shared stages divided among its clips)
    total = {stage: sum(v.timings[stage] or 0 for v in views) / 1000
             for stage in ("text_encode", "denoise", "vae_decode", "image_encode", "upload", "queue_wait")}
    stages = {"denoise": total["text_encode"] + total["denoise"], "vae_decode": total["vae_decode"],
              "encode": total["image_encode"] + total["upload"], "queue_wait": total["queue_wait"]}
    return elapsed, stages, views


def premise(views, loop_dir: Path, engine_dir: Path) -> dict:
    """Every farm clip against the engine's (exact) and the loop's (within TOLERANCE)."""
    import numpy as np

    from engine.clips import read_frames
    from farm.results.artifacts import ArtifactReader

    reader, worst = ArtifactReader(), {"max_levels": 0, "mean_levels": 0.0}
    for view in views:
        farm_frames = np.stack(read_frames(reader.read(view.artifact.store_url, view.artifact.key,
                                                       view.artifact.sha256))).astype(int)
        seed = view.spec.seed
        engine_frames = np.stack(read_frames((engine_dir / f"{seed}.webp").read_bytes())).astype(int)
        loop_frames = np.stack(read_frames((loop_dir / f"{seed}.webp").read_bytes())).astype(int)
        if not np.array_equal(farm_frames, engine_frames):
            raise RuntimeError(f"clip {seed}: the farm's frames differ from its engine's")
        if farm_frames.shape != loop_frames.shape:
            raise RuntimeError(f"clip {seed}: the farm and the loop rendered {farm_frames.shape} and {loop_frames.shape}")
        difference = np.abs(farm_frames - loop_frames)
        worst = {"max_levels": max(worst["max_levels"], int(difference.max())),
                 "mean_levels": max(worst["mean_levels"], float(difference.mean()))}
        if any(worst[k] > TOLERANCE[k] for k in TOLERANCE):
            raise RuntimeError(f"clip {seed}: the farm and the loop rendered different clips ({worst})")
    return {"clips_checked": len(views), "worst_max_levels": worst["max_levels"],
            "worst_mean_levels": round(worst["mean_levels"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=4, help="FARM_MICRO_BATCH: clips per pipeline call")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="farm workers, and loop processes (default: one per core, as on a CPU host)")
    parser.add_argument("--farm-setting", action="append", default=[], metavar="FARM_X=VALUE",
                        help="a worker setting to try (e.g. FARM_STORE_OVERLAP=0); recorded in the result")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "clips.json"))
    args = parser.parse_args()

    import farm as farm_lib

    threads = max(1, (os.cpu_count() or 1) // args.workers)  # what `farm up --workers N` gives each worker

    work = Path(tempfile.mkdtemp(prefix="farm-bench-clips-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_MODEL_CACHE=str(work / "models"), HF_HUB_OFFLINE="1",
               FARM_MICRO_BATCH=str(args.micro_batch), FARM_TORCH_THREADS=str(threads))
    settings = dict(setting.split("=", 1) for setting in args.farm_setting)
    if any(not name.startswith("FARM_") for name in settings):
        parser.error("--farm-setting takes FARM_NAME=VALUE")
    env.update(settings)
    peers_dir = work / "peers"
    peers_dir.mkdir()
    os.environ.update({k: v for k, v in env.items() if k.startswith("FARM_")})
    client = farm_lib.Farm.local(workers=args.workers, env=env)
    peers = None
    rounds = []
    try:
        warmed: set = set()  # every worker's AnimateDiff pipeline loaded: a micro-batch each, at once
        for attempt in range(5):
            seeds = range(10_000 * attempt, 10_000 * attempt + args.micro_batch * args.workers)
            warmed |= {v.worker for v in farm_round(client, work, [(PROMPTS[0], s) for s in seeds], args.frames)[2]}
            if len(warmed) == args.workers:
                break
        else:
            raise RuntimeError(f"only {len(warmed)} of {args.workers} workers took a warm-up micro-batch")
        peers = Peers(args.workers, env["FARM_MODEL_CACHE"], peers_dir.as_uri(), args.frames, threads)
        for round_ in range(args.rounds):
            first_seed = 100_000 * (round_ + 1)  # fresh every round (the same seeds on every side)
            clips = [(PROMPTS[i % len(PROMPTS)], first_seed + i) for i in range(args.clips)]
            load_before = os.getloadavg()[0]
            result: dict[str, dict] = {}
            views: list = []
            for side in SIDES[round_ % 3:] + SIDES[:round_ % 3]:  # rotate who goes first
                if side == "farm":
                    seconds, stages, views = farm_round(client, work, clips, args.frames)
                else:
                    seconds, stages = peers.run(side, clips, args.micro_batch)
                result[side] = {"frames_per_s": round(len(clips) * args.frames / seconds, 1),
                                "stage_s": {k: round(v, 3) for k, v in stages.items()}}
            checked = premise(views, peers_dir / "loop", peers_dir / "engine")
            rounds.append({"load_average_before": load_before, "load_average_after": os.getloadavg()[0],
                           **result, "premise": checked, "farm_batch_sizes": sorted({v.batch_size for v in views})})
            print(json.dumps({k: rounds[-1][k]["frames_per_s"] for k in SIDES}), flush=True)
    finally:
        if peers is not None:
            peers.close()
        client.close()
    rates = {side: [r[side]["frames_per_s"] for r in rounds] for side in SIDES}
    median = {side: statistics.median(v) for side, v in rates.items()}
    ratios = [r["farm"]["frames_per_s"] / r["loop"]["frames_per_s"] for r in rounds]
    best = max(rounds, key=lambda r: r["loop"]["frames_per_s"])  # the quietest round
    farm_render = sum(best["farm"]["stage_s"][k] for k in ("denoise", "vae_decode", "encode"))
    result = {
        "benchmark": "clips",
        "model": "tiny-sd", "motion": "tiny-sd-motion", "recipe": "lcm-lora", "steps": STEPS, "guidance": GUIDANCE,
        "size": f"{SIZE}x{SIZE}", "frames_per_clip": args.frames, "clips_per_round": args.clips,
        "rounds": args.rounds, "micro_batch": args.micro_batch, "device": "cpu", "farm_settings": settings,
        "deployment": f"{args.workers} processes a side (farm workers; loop and engine processes), {threads} torch "
                      f"threads each (the peer processes reported {peers.threads if peers else None}); the bench "
                      "process only submits and waits",
        "farm_workers": args.workers, "torch_threads_per_process": threads,
        "deliverable": "both: a lossless animated WebP per clip through engine.clips.encode_clip with the A1111 "
                       "parameters text and the JSON job record, put into a file:// store",
        "farm_timed": "Farm.submit_plan from a warm client until Farm.wait returns (every clip stored and recorded)",
        "fresh_seeds_per_round": True, "farm_rendered_every_clip": True,
        "premise": {"tolerance_farm_vs_loop": TOLERANCE, "farm_vs_engine": "identical frames",
                    "worst_max_levels": max(r["premise"]["worst_max_levels"] for r in rounds),
                    "worst_mean_levels": max(r["premise"]["worst_mean_levels"] for r in rounds),
                    "clips_checked": sum(r["premise"]["clips_checked"] for r in rounds)},
        **{f"{side}_frames_per_s": v for side, v in rates.items()},
        **{f"{side}_frames_per_s_median": m for side, m in median.items()},
        "ratio_farm_over_loop_median": round(statistics.median(ratios), 3),
        "ratio_farm_over_loop_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "context_ratio_engine_over_loop": round(median["engine"] / median["loop"], 3),
        "farm_share_of_stage_time_quietest_round": {k: round(best["farm"]["stage_s"][k] / farm_render, 3)
                                                    for k in ("denoise", "vae_decode", "encode")},
        "rounds_detail": rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
