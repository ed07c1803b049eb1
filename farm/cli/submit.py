"""`farm submit`: validate, expand, record and enqueue a batch."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json, warn
from farm.cli.options import job_options
from farm.jobs.plan import check_idempotency_key


@cli.command("submit")
@click.argument("prompt", required=False)
@job_options
@click.option("--file", "-f", "file", default=None, help="Prompts file: .txt (one per line), .csv (prompt column), .jsonl.")
@click.option("--key", default=None, help="Idempotency key: the same key returns the existing batch.")
@click.option("--priority", type=int, default=0, show_default=True, help="0..9, higher renders first.")
@click.option("--force", is_flag=True, help="Render every job, even those whose image already exists.")
@click.option("--dry-run", is_flag=True, help="Print the expansion and an ETA; write and enqueue nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print {batch, jobs, to_render, reused, ...} as JSON.")
@click.pass_obj
def submit_cmd(state: State, prompt, file, key, priority, force, dry_run, as_json, **options):
    """Validate, expand and enqueue a batch (workers render it: see `farm up`)."""
    check_idempotency_key(key)
    farm = state.farm
    if state.remote:  # FARM_URL: the server plans it; local images are uploaded first
        _submit_remote(farm, prompt, file, key, priority, force, dry_run, as_json, options)
        return
    planned = farm.plan(prompt, file=file, priority=priority, **options)
    for message in planned.warnings:
        warn(message)
    if dry_run:
        report = farm.estimate(planned, force=force)
        if as_json:
            emit_json(report)
        else:
            click.echo(f"{report['jobs']} jobs ({report['to_render']} to render, {report['reused']} reused); "
                       f"axes {report['axes']}; {report['prompts']} prompt(s), models {', '.join(report['models'])}, "
                       f"recipes {', '.join(report['recipes'])}; ETA {report['eta']} on {report['workers']} worker(s)")
        return
    result = farm.submit_plan(planned, key=key, force=force)
    if as_json:
        emit_json(result.as_dict())
    else:
        verb = "submitted" if result.created else "exists (same key)"
        seeds = "" if "seed" in planned.sweep.fields else f", base seed {result.base_seed}"
        click.echo(f"batch {result.batch}: {result.jobs} jobs {verb} ({result.to_render} to render, "
                   f"{result.reused} reused){seeds}")


def _submit_remote(farm, prompt, file, key, priority, force, dry_run, as_json, options) -> None:
    from farm.client.remote import request_body

    body = request_body(prompt, upload=farm.upload, file=file, priority=priority, **options)
    report = farm.submit_request(body, key=key, force=force, dry_run=dry_run)
    for message in report.get("warnings") or ():
        warn(message)
    if as_json:
        emit_json(report)
    elif dry_run:
        click.echo(f"{report['jobs']} jobs ({report['to_render']} to render, {report['reused']} reused); "
                   f"axes {report['axes']}; ETA {report['eta']} on {report['workers']} worker(s)")
    else:
        verb = "submitted" if report["created"] else "exists (same key)"
        click.echo(f"batch {report['batch']}: {report['jobs']} jobs {verb} ({report['to_render']} to render, "
                   f"{report['reused']} reused), base seed {report['base_seed']}")
