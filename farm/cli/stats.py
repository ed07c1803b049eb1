"""`farm stats`: per-stage percentiles, throughput and failure rate from the ledger."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from farm.cli import State, cli, emit_json


@cli.command("stats")
@click.option("--since", default="1h", show_default=True, help="Window: 30m, 1h, 7d, ...")
@click.option("--until", default=None, help="End of the window, as long ago as --since counts (default: now).")
@click.option("--by", type=click.Choice(["model", "recipe", "device", "worker", "tenant"]), default=None,
              help="tenant: what each tenant cost (images, GPU-seconds, failures, bytes stored).")
@click.option("--plot", "plot_file", default=None, help="Also draw the stage breakdown and throughput to a PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats_cmd(state: State, since, until, by, plot_file, as_json):
    """Images, images/s, failure rate and p50/p95/p99 per stage, from the ledger."""
    from farm.results.stats import STAGES, parse_since, summarise

    start = parse_since(since, datetime.now(timezone.utc))
    if by == "tenant":
        end = parse_since(until, datetime.now(timezone.utc)) if until else None
        _tenant_costs(state.farm.tenant_costs(start, end), start, end, as_json)
        return
    rows = state.farm.attempts(start)
    summary = summarise(rows, by)
    if plot_file:
        from farm.results.stats_plot import plot_stats

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


def _tenant_costs(rows: list[dict], start, end, as_json: bool) -> None:
    if as_json:
        emit_json({"since": start.isoformat(), "until": end.isoformat() if end else None, "by": "tenant",
                   "groups": rows})
        return
    click.echo(f"{'tenant':<20} {'images':>8} {'GPU-s':>10} {'failed jobs':>12} {'failed attempts':>16} {'MB stored':>10}")
    for r in rows:
        click.echo(f"{r['tenant']:<20} {r['images']:>8} {r['gpu_seconds']:>10.1f} {r['failed_jobs']:>12} "
                   f"{r['failed_attempts']:>16} {r['bytes_stored'] / 1e6:>10.1f}")

