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


@cli.command("dispatch")
@click.option("--holder", default=None, help="This dispatcher's name in the ledger's lock (default: dispatch-PID@HOST).")
@click.pass_obj
def dispatch_cmd(state: State, holder):
    """Run the fair-share dispatcher (FARM_SCHEDULER=fair) until stopped: it publishes each worker's
    next micro-batches in weighted fair order between tenants while it holds the ledger's dispatch
    lock, and stands by while another process does. Workers run one each as well; a separate one
    keeps dispatching while no worker is up."""
    import signal
    import threading

    if state.farm.config.scheduler != "fair":
        raise click.UsageError("the farm's scheduler is fifo (FARM_SCHEDULER): submissions publish their own jobs")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo("dispatching in fair order (stop with Ctrl-C)", err=True)
    state.farm.dispatch(stop, holder=holder)

