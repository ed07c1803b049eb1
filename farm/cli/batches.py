"""`farm batches list` and the batch controls `farm cancel|retry|pause|resume`."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json


@cli.group("batches")
def batches_group():
    """Batches and their progress."""


@batches_group.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def batches_list(state: State, limit, as_json):
    """Recent batches, newest first, with counts per state."""
    rows = [summary.as_dict() for summary in state.farm.batches(limit)]
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'batch':<10} {'created':<19} {'state':<7} {'pri':>3} {'done':>11} {'failed':>6}  model/recipe")
    for r in rows:
        click.echo(f"{r['batch']:<10} {r['created_at'][:19]:<19} {r['state']:<7} {r['priority']:>3} "
                   f"{r['done']:>5}/{r['jobs']:<5} {r['counts']['failed']:>6}  {r['model']}/{r['recipe']}")


@cli.command("cancel")
@click.argument("batch")
@click.option("--running", is_flag=True, help="Also stop running jobs at their next denoising step.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def cancel_cmd(state: State, batch, running, as_json):
    """Cancel a batch: queued jobs never render (with --running, running ones stop too)."""
    count = state.farm.cancel(batch, running=running)
    if as_json:
        emit_json({"batch": batch, "cancelled": count})
    else:
        click.echo(f"batch {batch}: {count} jobs cancelled")


@cli.command("retry")
@click.argument("batch")
@click.option("--failed", "failed_only", is_flag=True, help="Only failed jobs (not cancelled ones).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def retry_cmd(state: State, batch, failed_only, as_json):
    """Queue failed and cancelled jobs again; each gets a new attempt after its old ones."""
    requeued = state.farm.retry(batch, failed_only=failed_only)
    if as_json:
        emit_json({"batch": batch, "retried": len(requeued.job_ids), "messages": requeued.messages})
    else:
        click.echo(f"batch {batch}: {len(requeued.job_ids)} jobs queued again")


@cli.command("pause")
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def pause_cmd(state: State, batch, as_json):
    """Stop starting a batch's jobs (running ones finish); `farm resume` picks them up again."""
    state.farm.pause(batch)
    emit_json({"batch": batch, "state": "paused"}) if as_json else click.echo(f"batch {batch}: paused")


@cli.command("resume")
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def resume_cmd(state: State, batch, as_json):
    """Resume a paused batch: its queued jobs are published again."""
    requeued = state.farm.resume(batch)
    if as_json:
        emit_json({"batch": batch, "queued": len(requeued.job_ids), "messages": requeued.messages})
    else:
        click.echo(f"batch {batch}: resumed, {len(requeued.job_ids)} queued jobs published again")
