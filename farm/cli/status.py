"""`farm status`: a batch's counts per state, or live progress with --watch."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json
from farm.jobs import states


@cli.command("status")
@click.argument("batch")
@click.option("--watch", "-w", is_flag=True,
              help="Follow progress until every job is done; says so when no live worker is there to render it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status_cmd(state: State, batch, watch, as_json):
    """Counts per state of a batch."""
    farm = state.farm
    summary = farm.status(batch)
    info, counts = summary.batch, summary.counts
    if watch:
        counts = farm.wait(batch, progress=click.get_text_stream("stderr"))
    done = sum(counts[s] for s in states.TERMINAL)
    if as_json:
        emit_json({"batch": batch, "jobs": info.job_count, "done": done, "counts": counts,
                   "created_at": info.created_at.isoformat(), "base_seed": info.base_seed,
                   "model": info.model, "recipe": info.recipe, "priority": info.priority})
    else:
        summary_text = ", ".join(f"{s} {counts[s]}" for s in states.STATES if counts[s])
        click.echo(f"batch {batch}: {done}/{info.job_count} done ({summary_text or 'empty'})")
