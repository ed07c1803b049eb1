"""Entry point of one worker process: ``python -m workers.main --name NAME``.

``farm worker`` starts one of these per device with CUDA_VISIBLE_DEVICES pinned. It runs a Celery
worker with the solo pool (the process that consumes is the process that renders, nothing forks
after torch is loaded), concurrency 1 and prefetch 1.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="workers.main")
    parser.add_argument("--name", required=True)
    parser.add_argument("--queues", default=None)
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    os.environ["FARM_WORKER_NAME"] = args.name

    from farm.fleet.dispatcher import worker_queue
    from workers.app import app, config

    # its models' queues, and its own: where the fair-share dispatcher puts what it gives this worker
    queues = args.queues or f"{config.queue}.{config.default_model}"
    queues = f"{queues},{worker_queue(config.queue, args.name)}"
    os.environ["FARM_QUEUES"] = queues  # what it consumes from the start
    app.worker_main([
        "worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--queues", queues, "--hostname", args.name,
        "--without-gossip", "--without-mingle", "--loglevel", args.loglevel,
    ])


if __name__ == "__main__":
    main()
