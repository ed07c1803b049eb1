"""The fleet's processes: `farm workers [drain|cordon|uncordon]`, `farm worker`, `farm up`, `farm down`."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import click

from farm.cli import State, cli, emit_json
from farm.jobs import states


@cli.group("workers", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def workers_group(ctx, as_json):
    """The fleet: every worker that has registered in the ledger."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    now = datetime.now(timezone.utc)

    def shown_state(w) -> str:
        return states.worker_shown_state(w.state, (now - w.last_heartbeat).total_seconds())

    rows = [{"name": w.name, "host": w.host, "device": w.device, "gpu": w.gpu_name, "state": shown_state(w),
             "heartbeat_age_s": round((now - w.last_heartbeat).total_seconds(), 1),
             "resident_models": w.resident_models, "resident_adapters": w.resident_adapters,
             "current_job": w.current_job, "images_rendered": w.images_rendered, "last_error": w.last_error}
            for w in state.farm.workers()]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<32} {r['state']:<9} {r['device']:<7} {r['gpu'] or '':<14} beat "
                   f"{r['heartbeat_age_s']:>6}s ago  {r['images_rendered']:>6} images  job {r['current_job'] or '-':<6} "
                   f"models {','.join(r['resident_models']) or '-'}")
        if r["last_error"]:
            click.echo(f"    last error: {' '.join(r['last_error'].split())[:200]}")


def _worker_state_command(verb: str, state: str, doc: str, done: str) -> None:
    """`farm workers drain|cordon|uncordon NAME`: the worker notices within its heartbeat interval."""
    @workers_group.command(verb, help=doc)
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def command(state_obj: State, name, as_json):
        state_obj.farm.set_worker_state(name, state)
        emit_json({"worker": name, "state": state}) if as_json else click.echo(f"worker {name}: {done}")


_worker_state_command("drain", "draining", "Ask a worker to hand back its current micro-batch, take no new job, and stop.",
                      "draining (it notices within its heartbeat interval)")


_worker_state_command("cordon", "cordoned", "Stop a worker taking new work (it finishes what it renders and stays up).",
                      "cordoned")


_worker_state_command("uncordon", "active", "Let a cordoned worker take work again.", "active")


@cli.command("worker")
@click.option("--devices", default=None, help="GPU indices (0,1), or 'cpu'. One worker process each.")
@click.option("--workers", type=int, default=None, help="Number of CPU worker processes.")
@click.option("--models", default=None, help="Models to serve, preferred first (default: every known model).")
@click.option("--name-prefix", default="farm", show_default=True, help="Worker names: PREFIX-gpu0@host.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Worker log lines as text (default) or JSON for shipping (FARM_LOG_FORMAT).")
@click.option("--offload", type=click.Choice(["none", "model", "sequential"]), default=None,
              help="Small GPUs: keep weights in host RAM, each model (or layer) on the GPU while it runs (FARM_OFFLOAD).")
@click.option("--vae-tiling", is_flag=True, default=None, help="Decode large images in tiles (FARM_VAE_TILING=1).")
@click.pass_obj
def worker_cmd(state: State, devices, workers, models, name_prefix, log_format, offload, vae_tiling):
    """Run workers in the foreground, one pinned process per device, restarted if one dies."""
    if log_format:
        os.environ["FARM_LOG_FORMAT"] = log_format  # the workers inherit it
    if offload:
        os.environ["FARM_OFFLOAD"] = offload  # per worker process: each reads its own settings
    if vae_tiling:
        os.environ["FARM_VAE_TILING"] = "1"
    device_list = state.farm.devices(devices, workers)
    status = state.farm.run_workers(device_list, models=models, name_prefix=name_prefix)
    if status:
        raise SystemExit(status)  # a worker was killed rather than drained (its jobs: the reaper's)


@cli.command("up")
@click.option("--devices", default=None, help="GPU indices (0,1), or 'cpu'.")
@click.option("--workers", type=int, default=None, help="Number of CPU worker processes (default 1).")
@click.option("--models", default=None, help="Models to serve, preferred first (default: every known model).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def up_cmd(state: State, devices, workers, models, as_json):
    """Start the local farm in the background: private Redis (if no FARM_BROKER_URL) and workers."""
    device_list = state.farm.devices(devices, workers)
    info = state.farm.up(device_list, models=models)
    if as_json:
        emit_json(info)
    elif info["started"]:
        click.echo(f"farm up: {len(device_list)} worker(s) (pid {info['pid']}), broker {info['broker']}")
    else:
        click.echo(f"farm already up (pid {info['pid']}), broker {info['broker']}")


@cli.command("down")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def down_cmd(state: State, as_json):
    """Stop the local farm: workers finish their current job, then the private Redis stops."""
    info = state.farm.down()
    if as_json:
        emit_json(info)
    else:
        parts = [name for name, stopped in (("workers", info["workers_stopped"]),
                                            ("redis", info["redis_stopped"])) if stopped]
        click.echo(f"farm down: stopped {', '.join(parts)}" if parts else "farm down: nothing was running")
