"""Train the built-in ``tiny-sd`` teacher and write its weights (issue 14).

    .venv/bin/python scripts/train_tiny_teacher.py --out engine/weights/tiny-sd --seed 0

Trains the tiny VAE as an autoencoder and the tiny UNet as a text-conditioned epsilon-prediction
denoiser on the generated shapes set (engine.training.shapes, "a red circle", ...), on the CPU in a
few minutes. Writes ``unet.safetensors``, ``vae.safetensors``, ``SHA256SUMS`` and ``training.json``
to ``--out``; ``engine.pipelines.tiny.build_tiny_sd`` loads them (checking the sums), so commit all
four together. ``--check`` then renders every caption through the built pipeline and prints how
many renders show the caption's colour (and shape).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    from engine.training.teacher import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("engine/weights/tiny-sd"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    parser.add_argument("--images", type=int, default=defaults.images, help="size of the generated training set")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--vae-batch", type=int, default=defaults.vae_batch)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="UNet batch size")
    parser.add_argument("--unet-lr", type=float, default=defaults.unet_lr)
    parser.add_argument("--dtype", choices=("float16", "float32"), default=defaults.dtype, help="of the saved weights")
    parser.add_argument("--check", action="store_true", help="render every caption afterwards and report the caption check")
    args = parser.parse_args(argv)

    import torch

    from engine.training import teacher

    config = TrainConfig(seed=args.seed, threads=args.threads, images=args.images, vae_steps=args.vae_steps,
                         vae_batch=args.vae_batch, unet_steps=args.unet_steps, batch=args.batch,
                         unet_lr=args.unet_lr, dtype=args.dtype)
    began = time.perf_counter()
    cpu_began = time.process_time()
    unet, vae, report = teacher.train(config, log=lambda line: print(line, flush=True))
    report["wall_s"] = round(time.perf_counter() - began, 1)
    report["cpu_s"] = round(time.process_time() - cpu_began, 1)
    sums = teacher.save(args.out, unet, vae, report, dtype=args.dtype)
    print(f"trained in {report['wall_s']}s wall ({report['cpu_s']}s CPU, torch {torch.__version__}, "
          f"{report['threads']} threads); losses {report['losses']}; scaling_factor {report['scaling_factor']:.5f}")
    for name, digest in sums.items():
        print(f"{digest}  {args.out / name}  ({(args.out / name).stat().st_size} bytes)")

    if args.check:
        import tempfile

        from diffusers import StableDiffusionPipeline

        from engine.pipelines.tiny import build_tiny_sd
        from engine.training import shapes

        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_sd(Path(tmp), weights=args.out)
            pipe = StableDiffusionPipeline.from_pretrained(tmp, safety_checker=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            for steps in (25, 2):
                colour, both, _ = teacher.caption_check(pipe, list(shapes.CAPTIONS), [0, 1, 2, 3], steps=steps,
                                                        guidance=5.0)
                print(f"caption check, Euler {steps} steps, guidance 5: colour {colour:.0%}, colour and shape {both:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
