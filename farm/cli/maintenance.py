"""`farm reap` and `farm reconcile`: fleet maintenance on demand (workers also run it)."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json


@cli.command("reap")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reap_cmd(state: State, as_json):
    """Return jobs whose worker's lease lapsed to the queue (or fail them after max attempts)."""
    done = state.farm.reap()
    emit_json(done) if as_json else click.echo(f"reaped: {done['requeued']} requeued, {done['failed']} failed")


@cli.command("reconcile")
@click.option("--grace", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="Leave jobs published less than this many seconds ago alone.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reconcile_cmd(state: State, grace, as_json):
    """Publish queued jobs that no message in the broker carries."""
    done = state.farm.reconcile(grace_s=grace)
    emit_json(done) if as_json else click.echo(f"reconciled: {done['republished']} jobs published again")
