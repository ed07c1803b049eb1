"""`farm run`: a batch end to end on a local farm it starts (and heals) if none runs."""

from __future__ import annotations

import time

import click

from farm.cli import State, cli, emit_json, warn
from farm.cli.options import job_options
from farm.errors import FarmTimeout
from farm.jobs import states


@cli.command("run")
@click.argument("prompt", required=False)
@job_options
@click.option("--file", "-f", "file", default=None, help="Prompts file (.txt, .csv, .jsonl).")
@click.option("--out", "-o", "out", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Directory the images are copied to.")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="CPU workers to start (default 1).")
@click.option("--devices", default=None, help="GPUs to start workers on, e.g. 0,1 (or 'cpu').")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="Seconds to wait for the batch.")
@click.option("--json", "as_json", is_flag=True, help="Print {batch, jobs, succeeded, failed, outputs} as JSON.")
@click.pass_obj
def run_cmd(state: State, prompt, file, out, workers, devices, timeout, as_json, **options):
    """Render a batch end to end: start the farm if needed, submit, wait, fetch, stop.

    Workers it started that die while it waits are started again; they stop with it, even when
    it is killed."""
    farm = state.farm
    planned = farm.plan(prompt, file=file, **options)  # all validation before anything starts
    farm.devices(devices, workers)
    for message in planned.warnings:
        warn(message)
    began = time.monotonic()
    try:
        farm.start_local(workers=workers, devices=devices)
        result = farm.submit_plan(planned)
        try:
            counts = farm.wait(result.batch, timeout=timeout, progress=click.get_text_stream("stderr"))
        except FarmTimeout as exc:
            counts = exc.counts
        elapsed = time.monotonic() - began
        paths = farm.download(result.batch, out)
    finally:
        farm.stop_local()
    done = sum(counts[s] for s in states.TERMINAL)
    payload = {
        "batch": result.batch, "jobs": result.jobs, "succeeded": counts[states.SUCCEEDED],
        "failed": counts[states.FAILED], "cancelled": counts[states.CANCELLED],
        "unfinished": result.jobs - done, "base_seed": result.base_seed,
        "outputs": [str(p) for p in paths], "elapsed_s": round(elapsed, 3),
    }
    if as_json:
        emit_json(payload)
    else:
        click.echo(f"batch {result.batch}: {payload['succeeded']}/{result.jobs} images in {elapsed:.1f}s -> {out}")
    if payload["failed"] or payload["unfinished"]:
        for view in farm.jobs(result.batch, states.FAILED, limit=3):
            warn(f"job {view.id} failed: {' '.join(str(view.last_error).split())[:500]}")
        if payload["unfinished"]:
            warn(f"{payload['unfinished']} jobs unfinished after {timeout:g}s")
        return 1
    return 0
