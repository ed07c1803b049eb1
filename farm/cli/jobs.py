"""`farm jobs list`: jobs with seeds, states, timings and artifacts."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json
from farm.jobs import states


@cli.group("jobs")
def jobs_group():
    """Inspect jobs."""


@jobs_group.command("list")
@click.option("--batch", default=None)
@click.option("--state", "job_state", type=click.Choice(states.STATES), default=None)
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def jobs_list(state: State, batch, job_state, limit, as_json):
    """Jobs with seed, state, per-stage timings (ms) and artifact key."""
    rows = [view.as_dict() for view in state.farm.jobs(batch, job_state, limit)]
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'id':>6} {'batch':<10} {'idx':>4} {'seed':>10} {'state':<9} {'total_ms':>9} artifact")
    for r in rows:
        total = r["timings"].get("total")
        click.echo(f"{r['id']:>6} {r['batch']:<10} {r['index']:>4} {r['seed']:>10} {r['state']:<9} "
                   f"{'' if total is None else f'{total:.1f}':>9} {r['artifact'] or ''}")
