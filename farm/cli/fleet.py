"""`farm fleet backlog` and `farm fleet desired`: the autoscaler's signal (issue 26), read from the
ledger: each model's backlog in estimated GPU-seconds, and the workers it asks for."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json
from farm.jobs.values import parse_duration


@cli.group("fleet")
def fleet_group():
    """The fleet's scaling signal: backlog in GPU-seconds and the desired worker count."""


@fleet_group.command("backlog")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable); default: every model with work.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backlog_cmd(state: State, models, as_json):
    """Jobs queued or rendering per model, and their estimated GPU-seconds."""
    rows = [{"model": b.model, "jobs": b.jobs, "backlog_s": round(b.gpu_s, 3)}
            for b in state.farm.backlog(list(models) or None).values()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no backlog")
    for r in rows:
        click.echo(f"{r['model']:<32} {r['jobs']:>8} jobs  {r['backlog_s']:>12.1f} GPU-s")


@fleet_group.command("desired")
@click.option("--model", required=True, help="The model whose workers to size.")
@click.option("--drain", default=None, help="Target drain time (300s, 5m, 1h; default FARM_DRAIN_TARGET_S).")
@click.option("--per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="GPU-seconds one worker renders per second (GPUs it renders on at once).")
@click.option("--min", "minimum", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max", "maximum", type=click.IntRange(min=0), default=None, help="At most this many workers.")
@click.option("--current", type=click.IntRange(min=0), default=None,
              help="Workers running now (default: the live ones serving the model, from the ledger).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def desired_cmd(state: State, model, drain, per_worker, minimum, maximum, current, as_json):
    """How many workers the model's backlog asks for to drain within the target."""
    drain_s = None if drain is None else parse_duration("drain", drain, 1, 7 * 86400, examples="300s, 5m or 1h",
                                                        bounds="1 second .. 7 days")
    answer = state.farm.desired_workers(model, drain_s, per_worker=per_worker, minimum=minimum, maximum=maximum,
                                        current=current)
    if as_json:
        emit_json(answer)
        return
    drains = answer["drain_at_desired_s"]
    click.echo(f"{answer['model']}: {answer['jobs']} jobs, {answer['backlog_s']:.1f} GPU-s of backlog; "
               f"{answer['current']} worker(s) now, {answer['desired']} desired "
               f"(drains in {'-' if drains is None else f'{drains:.0f}s'}, target {answer['drain_s']:.0f}s)")
