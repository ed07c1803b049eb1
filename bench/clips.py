"""Clips (issue 27): the farm against a plain AnimateDiffPipeline loop, like for like, and where the time goes.

On tiny-sd with its tiny motion module (LCM-LoRA, LCMScheduler, 4 steps, 64 px, guidance 1), the
same clips (prompts x seeds, FRAMES frames each) go through

- the loop: diffusers' ``AnimateDiffPipeline`` made once (model + ``MotionAdapter``, LCM-LoRA
  loaded), called on micro-batches of ``--micro-batch`` clips (a list of generators, one seed per
  clip: the farm's batching), each clip written as a lossless animated WebP with Pillow, the
  farm's encoder settings; in this process, one process as the farm's one worker is;
- the farm's engine alone: ``Runner.render`` on the same micro-batches and the worker's encoder,
  in this process (what the farm's bookkeeping costs shows apart);
- the farm: ``farm submit --kind clip`` -> Redis -> Celery worker (micro-batches of the same size)
  -> WebP with metadata -> store -> ledger, timed from submit to the last clip recorded.

Each side's time is split into denoise (the pipeline call to latents), VAE decode of every frame,
and encode (WebP); the farm's from its attempts' per-stage timings, the loop's measured around
the same calls. Both warm, alternating rounds, fresh seeds each round (a repeated seed would be
reused by digest, measuring nothing): the benchmark checks the farm rendered every clip and that
its frames match the loop's for one clip within a level on average (the premise that both do
the same work; not bit for bit: the farm pads calls to its batch bucket and computes small products
row by row for batch invariance).

    .venv/bin/python bench/clips.py --clips 8 --frames 16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPTS = ("a red circle", "a blue square", "a yellow triangle", "a green circle")
STEPS, GUIDANCE, SIZE, FPS = 4, 1.0, 64, 8


class Loop:
    """The plain diffusers way: one AnimateDiffPipeline, a micro-batch of clips per call."""

    def __init__(self, model_cache: Path, out_dir: Path, frames: int, device: str):
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
        self.device = device
        self.out_dir, self.frames = out_dir, frames
        self.stages = {"denoise": 0.0, "vae_decode": 0.0, "encode": 0.0}

    def call(self, clips: list[tuple[str, int]]) -> list:
        """Render and write a micro-batch of (prompt, seed) clips; their frames (uint8 arrays)."""
        import torch
        from PIL import Image

        started = time.perf_counter()
        latents = self.pipe([p for p, _ in clips], num_frames=self.frames, height=SIZE, width=SIZE,
                            num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent",
                            generator=[torch.Generator("cpu").manual_seed(s) for _, s in clips]).frames
        self._sync()
        decoded = time.perf_counter()
        video = self.pipe.decode_latents(latents, decode_chunk_size=self.frames)  # (clips, 3, F, H, W)
        frames = ((video / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        self._sync()
        encoded = time.perf_counter()
        for (_, seed), clip in zip(clips, frames):
            images = [Image.fromarray(f) for f in clip]
            images[0].save(self.out_dir / f"{seed}.webp", format="WEBP", save_all=True, append_images=images[1:],
                           duration=round(1000 / FPS), loop=0, lossless=True, quality=100, method=4)
        done = time.perf_counter()
        self.stages["denoise"] += decoded - started
        self.stages["vae_decode"] += encoded - decoded
        self.stages["encode"] += done - encoded
        return list(frames)

    def _sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def frames_per_s(self, clips: list[tuple[str, int]], micro_batch: int) -> float:
        self.stages = dict.fromkeys(self.stages, 0.0)
        started = time.perf_counter()
        for i in range(0, len(clips), micro_batch):
            self.call(clips[i:i + micro_batch])
        return len(clips) * self.frames / (time.perf_counter() - started)


class Engine:
    """The farm's render engine alone, in this process: ``Runner.render`` on the same micro-batches
    and the worker's encoder (what the farm adds on top: submission, queue, ledger, store)."""

    def __init__(self, model_cache: Path, frames: int, device: str):
        from engine.runner import Runner

        self.runner = Runner(device=device, model_cache=model_cache)
        self.frames = frames
        self.stages = {"denoise": 0.0, "vae_decode": 0.0, "encode": 0.0}

    def frames_per_s(self, clips: list[tuple[str, int]], micro_batch: int) -> float:
        from engine.clips import encode_clip
        from farm.jobs.spec import Catalog, JobRequest, resolve_job

        specs = [resolve_job(JobRequest(prompt=p, seed=s, frames=self.frames, fps=FPS, steps=STEPS, guidance=GUIDANCE),
                             Catalog(), "tiny-sd") for p, s in clips]
        self.stages = dict.fromkeys(self.stages, 0.0)
        started = time.perf_counter()
        for i in range(0, len(specs), micro_batch):
            rendered = self.runner.render(specs[i:i + micro_batch])
            self.stages["denoise"] += rendered.timings["denoise_ms"] / 1000
            self.stages["vae_decode"] += rendered.timings["vae_decode_ms"] / 1000
            encoding = time.perf_counter()
            for pixels in rendered.pixels:
                encode_clip(pixels, FPS, "webp", "parameters", "{}")
            self.stages["encode"] += time.perf_counter() - encoding
        return len(specs) * self.frames / (time.perf_counter() - started)


def farm_cli(*args, env) -> str:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def farm_round(env: dict, clips: list[tuple[str, int]], frames: int) -> tuple[float, dict, list]:
    """Submit the clips as one batch, wait for the last; frames/s, per-stage seconds, the views."""
    from farm.config import load_config
    from farm.ledger import Ledger

    ledger = Ledger(load_config(env).database_url)
    try:
        path = Path(env["FARM_HOME"]).parent / f"clips-{clips[0][1]}.jsonl"  # one row per clip: its prompt, its seed
        path.write_text("".join(json.dumps({"prompt": p, "seed": s}) + "\n" for p, s in clips))
        started = time.perf_counter()
        submitted = json.loads(farm_cli("submit", "--file", str(path), "--model", "tiny-sd", "--kind", "clip",
                                        "--frames", str(frames), "--fps", str(FPS), "--steps", str(STEPS),
                                        "--guidance", str(GUIDANCE), "--json", env=env))
        if submitted["to_render"] != len(clips):  # the premise: every clip of the round is rendered
            raise RuntimeError(f"the farm would reuse {submitted['reused']} of {len(clips)} clips: seeds repeated")
        batch = submitted["batch"]
        while sum(ledger.batch_counts(batch)[s] for s in ("succeeded", "failed")) < len(clips):
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        views = ledger.list_jobs(batch)
        if any(v.state != "succeeded" or not v.spec.clip for v in views):
            raise RuntimeError("a clip failed or the farm rendered another kind")
        # per-stage timings are per clip (a micro-batch's shared stages divided among its clips)
        stages = {stage: sum(v.timings[stage] or 0 for v in views) / 1000
                  for stage in ("denoise", "vae_decode", "image_encode", "upload", "text_encode", "queue_wait")}
        return len(clips) * frames / elapsed, stages, views
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4, help="FARM_MICRO_BATCH: clips per pipeline call")
    parser.add_argument("--device", default="cpu", help="the loop's device (the farm's worker picks its own)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "clips.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="farm-bench-clips-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(work / "home"), FARM_MODEL_CACHE=str(work / "models"), HF_HUB_OFFLINE="1",
               FARM_MICRO_BATCH=str(args.micro_batch))
    loop_dir = work / "loop"
    loop_dir.mkdir()
    farm_cli("up", "--workers", "1", env=env)
    rounds = []
    try:
        farm_round(env, [(PROMPTS[0], 1)], args.frames)  # warm: the worker's AnimateDiff pipeline loaded
        loop = Loop(Path(env["FARM_MODEL_CACHE"]), loop_dir, args.frames, args.device)
        loop.call([(PROMPTS[0], 1)])  # warm
        engine = Engine(Path(env["FARM_MODEL_CACHE"]), args.frames, args.device)
        engine.frames_per_s([(PROMPTS[0], 1)], 1)  # warm
        for round_ in range(args.rounds):
            first_seed = 100_000 * (round_ + 1)  # fresh every round
            clips = [(PROMPTS[i % len(PROMPTS)], first_seed + i) for i in range(args.clips)]
            loop_rate = loop.frames_per_s(clips, args.micro_batch)
            loop_stages = dict(loop.stages)
            engine_rate = engine.frames_per_s(clips, args.micro_batch)
            engine_stages = dict(engine.stages)
            farm_rate, farm_stages, views = farm_round(env, clips, args.frames)
            if round_ == 0 and args.device == "cpu":  # the premise: both render the same frames
                import numpy as np

                from engine.clips import read_frames
                from farm.results.artifacts import ArtifactReader

                view = views[0]
                stored = ArtifactReader().read(view.artifact.store_url, view.artifact.key, view.artifact.sha256)
                farm_frames = np.stack(read_frames(stored)).astype(int)
                loop_frames = np.stack(read_frames((loop_dir / f"{view.spec.seed}.webp").read_bytes())).astype(int)
                difference = np.abs(farm_frames - loop_frames)
                # not bit-exact: the farm pads calls to its batch bucket and computes small products
                # row by row (engine.invariance); a different clip would differ by tens of levels
                if farm_frames.shape != loop_frames.shape or difference.mean() > 1.0:
                    raise RuntimeError(f"the farm and the loop rendered different clips (mean difference "
                                       f"{difference.mean():.2f} levels)")
                rounds_premise = {"clip_checked": view.spec.seed, "frames": int(farm_frames.shape[0]),
                                  "max_difference_levels": int(difference.max()),
                                  "mean_difference_levels": round(float(difference.mean()), 4)}
            rounds.append({"loop_frames_per_s": round(loop_rate, 1), "farm_frames_per_s": round(farm_rate, 1),
                           "engine_frames_per_s": round(engine_rate, 1),
                           "loop_stage_s": {k: round(v, 3) for k, v in loop_stages.items()},
                           "engine_stage_s": {k: round(v, 3) for k, v in engine_stages.items()},
                           "farm_stage_s": {k: round(v, 3) for k, v in farm_stages.items()},
                           "farm_batch_sizes": sorted({v.batch_size for v in views})})
    finally:
        farm_cli("down", env=env)
    loop_median = statistics.median(r["loop_frames_per_s"] for r in rounds)
    farm_median = statistics.median(r["farm_frames_per_s"] for r in rounds)
    last = rounds[-1]
    farm_total = sum(last["farm_stage_s"][k] for k in ("denoise", "vae_decode", "image_encode"))
    result = {
        "benchmark": "clips",
        "model": "tiny-sd", "motion": "tiny-sd-motion", "recipe": "lcm-lora", "steps": STEPS, "guidance": GUIDANCE,
        "size": f"{SIZE}x{SIZE}", "frames_per_clip": args.frames, "clips_per_round": args.clips,
        "rounds": args.rounds, "micro_batch": args.micro_batch, "farm_workers": 1, "loop_processes": 1,
        "loop_device": args.device, "format": "webp (lossless, Pillow)", "fresh_seeds_per_round": True,
        "farm_rendered_every_clip": True, "farm_time_includes": "submit to the last clip recorded",
        "premise": rounds_premise if args.device == "cpu" else "not checked across devices",
        "loop_frames_per_s_median": loop_median, "farm_frames_per_s_median": farm_median,
        "ratio_farm_over_loop": round(farm_median / loop_median, 3),
        "engine_frames_per_s_median": statistics.median(r["engine_frames_per_s"] for r in rounds),
        "ratio_engine_over_loop": round(statistics.median(r["engine_frames_per_s"] for r in rounds) / loop_median, 3),
        "load_average_after": os.getloadavg()[0],  # this machine's cores are shared: read the figures with it
        "farm_share_of_render_time": {k: round(last["farm_stage_s"][k] / farm_total, 3)
                                      for k in ("denoise", "vae_decode", "image_encode")},
        "rounds_detail": rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
