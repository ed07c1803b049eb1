"""Fleet commands: workers (list, drain), reap, reconcile, results url."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import click

from farm.cli import State, cli, emit_json
from farm.cli.jobs import results_group
from farm.errors import InputError

MAX_URL_EXPIRY_S = 7 * 24 * 3600  # S3's own ceiling for presigned URLs
LOST_AFTER_S = 30.0


def parse_duration(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not match:
        raise InputError("expires", f"expected a duration such as 15m, 2h or 900, got {text!r}")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 1 <= seconds <= MAX_URL_EXPIRY_S:
        raise InputError("expires", f"{text} is outside 1s..7d")
    return seconds


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
        age = (now - w.last_heartbeat).total_seconds()
        # a live worker beats every 10 s: three missed beats and it is lost (crashed, partitioned)
        return "lost" if w.state in ("active", "draining", "cordoned") and age > LOST_AFTER_S else w.state

    rows = [{"name": w.name, "host": w.host, "device": w.device, "gpu": w.gpu_name, "state": shown_state(w),
             "heartbeat_age_s": round((now - w.last_heartbeat).total_seconds(), 1),
             "resident_models": w.resident_models, "resident_adapters": w.resident_adapters,
             "current_job": w.current_job, "images_rendered": w.images_rendered, "last_error": w.last_error}
            for w in state.ledger.workers()]
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
    @click.pass_obj
    def command(state_obj: State, name):
        state_obj.ledger.set_worker_state(name, state)
        click.echo(f"worker {name}: {done}")


_worker_state_command("drain", "draining", "Ask a worker to hand back its current micro-batch, take no new job, and stop.",
                      "draining (it notices within its heartbeat interval)")
_worker_state_command("cordon", "cordoned", "Stop a worker taking new work (it finishes what it renders and stays up).",
                      "cordoned")
_worker_state_command("uncordon", "active", "Let a cordoned worker take work again.", "active")


@cli.command("reap")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reap_cmd(state: State, as_json):
    """Return jobs whose worker's lease lapsed to the queue (or fail them after max attempts)."""
    from farm.cli.jobs import publishing
    from farm.maintenance import reap

    with publishing(state) as publisher:
        done = reap(state.ledger, publisher, max_attempts=state.config.max_attempts,
                    micro_batch=state.config.micro_batch)
    emit_json(done) if as_json else click.echo(f"reaped: {done['requeued']} requeued, {done['failed']} failed")


@cli.command("reconcile")
@click.option("--grace", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="Leave jobs published less than this many seconds ago alone.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reconcile_cmd(state: State, grace, as_json):
    """Publish queued jobs that no message in the broker carries."""
    from farm.cli.jobs import publishing
    from farm.maintenance import reconcile

    with publishing(state) as publisher:
        done = reconcile(state.ledger, publisher, grace_s=grace, micro_batch=state.config.micro_batch)
    emit_json(done) if as_json else click.echo(f"reconciled: {done['republished']} jobs published again")


@results_group.command("url")
@click.argument("job", type=int)
@click.option("--expires", default="15m", show_default=True, help="How long the link works (at most 7d).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def url_cmd(state: State, job, expires, as_json):
    """A GET-only presigned URL for a job's image (s3:// stores)."""
    from farm.storage import open_store

    seconds = parse_duration(expires)
    [row] = state.ledger.list_jobs(job_id=job) or [None]
    if row is None:
        from farm.errors import NotFound

        raise NotFound(f"no job {job}")
    if not row["artifact"]:
        raise InputError("job", f"job {job} has no stored image (state {row['state']})")
    store = open_store(row["store_url"], s3_endpoint_url=state.config.s3_endpoint_url)
    if not hasattr(store, "presigned_get"):
        raise InputError("store", f"{row['store_url']} is a local store; presigned URLs need an s3:// store")
    link = store.presigned_get(row["artifact"], seconds)
    emit_json({"job": job, "url": link, "expires_s": seconds}) if as_json else click.echo(link)


@cli.command("stats")
@click.option("--since", default="1h", show_default=True, help="Window: 30m, 1h, 7d, ...")
@click.option("--by", type=click.Choice(["model", "recipe", "device", "worker"]), default=None)
@click.option("--plot", "plot_file", default=None, help="Also draw the stage breakdown and throughput to a PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats_cmd(state: State, since, by, plot_file, as_json):
    """Images, images/s, failure rate and p50/p95/p99 per stage, from the ledger."""
    from farm.stats import STAGES, parse_since, summarise

    start = parse_since(since, datetime.now(timezone.utc))
    rows = state.ledger.attempt_rows(start)
    summary = summarise(rows, by)
    if plot_file:
        from farm.stats_plot import plot_stats

        plot_stats(rows, summary, plot_file, title=f"farm stats since {since}" + (f" by {by}" if by else ""))
    if as_json:
        emit_json({"since": start.isoformat(), "by": by, "groups": summary})
        return
    for group in summary:
        rate = group["images_per_s"]
        click.echo(f"{group['group']}: {group['images']} images, {rate if rate is not None else '-'} img/s, "
                   f"failure rate {group['failure_rate']:.1%}")
        for stage in STAGES:
            p = group["stages_ms"][stage]
            if p["p50"] is not None:
                click.echo(f"  {stage:<13} p50 {p['p50']:>9.1f}  p95 {p['p95']:>9.1f}  p99 {p['p99']:>9.1f} ms")
