"""Operator commands: worker, up, down, db, recipes."""

from __future__ import annotations

import os

import click

from farm.cli import State, cli, emit_json


def _devices(devices, workers):
    from farm.localfarm import parse_devices

    return parse_devices(devices, workers)


def _model_queues(state: State, models: str | None) -> str:
    """The queues of the models a worker serves, in order of preference (with the broker's
    priority queue order, a worker drains its first model's queue before the next)."""
    from farm.dispatch import model_queue
    from farm.errors import InputError

    known = state.catalog().models
    names = [m.strip() for m in models.split(",") if m.strip()] if models else sorted(known)
    unknown = [m for m in names if m not in known]
    if unknown:
        raise InputError("models", f"unknown model {unknown[0]!r} (see `farm models list`)")
    return ",".join(model_queue(state.config.queue, m) for m in names)


@cli.command("worker")
@click.option("--devices", default=None, help="GPU indices (0,1), or 'cpu'. One worker process each.")
@click.option("--workers", type=int, default=None, help="Number of CPU worker processes.")
@click.option("--models", default=None, help="Models to serve, preferred first (default: every known model).")
@click.option("--name-prefix", default="farm", show_default=True, help="Worker names: PREFIX-gpu0@host.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Worker log lines as text (default) or JSON for shipping (FARM_LOG_FORMAT).")
@click.pass_obj
def worker_cmd(state: State, devices, workers, models, name_prefix, log_format):
    """Run workers in the foreground, one pinned process per device, restarted if one dies."""
    from farm import localfarm
    from farm.spec import check_name

    check_name("name-prefix", name_prefix)
    if log_format:
        os.environ["FARM_LOG_FORMAT"] = log_format  # the workers inherit it
    device_list = _devices(devices, workers)
    state.ledger  # noqa: B018 - migrate a fresh SQLite ledger once, before the workers race to
    queues = _model_queues(state, models)
    broker = localfarm.ensure_redis(state.config)
    slots = localfarm.worker_slots(state.config, device_list, broker, prefix=name_prefix,
                                   serve_all_models=models is None)
    click.echo(f"starting {len(slots)} worker(s): {', '.join(s.name for s in slots)}", err=True)
    return localfarm.supervise(slots, queues=queues)


@cli.command("up")
@click.option("--devices", default=None, help="GPU indices (0,1), or 'cpu'.")
@click.option("--workers", type=int, default=None, help="Number of CPU worker processes (default 1).")
@click.option("--models", default=None, help="Models to serve, preferred first (default: every known model).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def up_cmd(state: State, devices, workers, models, as_json):
    """Start the local farm in the background: private Redis (if no FARM_BROKER_URL) and workers."""
    from farm import localfarm

    device_list = _devices(devices, workers)
    state.ledger  # noqa: B018
    _model_queues(state, models)  # refuse unknown models here, not in the background
    from farm.config import redact_url

    info = localfarm.up(state.config, device_list, models=models)
    info["broker"] = redact_url(info["broker"])  # a password never reaches the terminal or a log
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
    from farm import localfarm

    info = localfarm.down(state.config)
    if as_json:
        emit_json(info)
    else:
        parts = [name for name, stopped in (("workers", info["workers_stopped"]),
                                            ("redis", info["redis_stopped"])) if stopped]
        click.echo(f"farm down: stopped {', '.join(parts)}" if parts else "farm down: nothing was running")


@cli.group("db")
def db_group():
    """Ledger schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(state: State, revision):
    """Apply migrations to FARM_DATABASE_URL (or the farm home's SQLite file)."""
    from farm.ledger import Ledger
    from farm.ledger.ledger import current_revision, upgrade

    ledger = Ledger(state.config.database_url, auto_migrate=False)
    try:
        before = current_revision(ledger.engine)
        upgrade(ledger.engine, revision)
        after = current_revision(ledger.engine)
    finally:
        ledger.close()
    click.echo(f"ledger {ledger.safe_url}: {before or 'empty'} -> {after}")


@db_group.command("current")
@click.pass_obj
def db_current(state: State):
    """Show the ledger's schema revision and the newest one this farm knows."""
    from farm.ledger import Ledger
    from farm.ledger.ledger import current_revision, head_revision

    ledger = Ledger(state.config.database_url, auto_migrate=False)
    try:
        click.echo(f"current {current_revision(ledger.engine) or 'empty'}, head {head_revision()}")
    finally:
        ledger.close()


@cli.group("recipes")
def recipes_group():
    """Few-step recipes: scheduler, steps, guidance, accelerator."""


@recipes_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def recipes_list(as_json):
    """The recipes with their allowed and default steps and guidance."""
    from farm.recipes import RECIPES

    if as_json:
        emit_json([r.as_dict() for r in RECIPES.values()])
        return
    for r in RECIPES.values():
        steps = ",".join(map(str, r.step_choices)) if r.step_choices else f"{r.steps[0]}-{r.steps[1]}"
        click.echo(f"{r.name:<10} steps {steps:<12} (default {r.default_steps:<2}) guidance "
                   f"{r.guidance[0]:g}-{r.guidance[1]:g} (default {r.default_guidance:g})  "
                   f"{r.scheduler or 'model default':<30} {r.summary}")
