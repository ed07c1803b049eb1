"""`farm stats`: per-stage percentiles, throughput and failure rate from the ledger."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from farm.cli import State, cli, emit_json


@cli.command("stats")
@click.option("--since", default="1h", show_default=True, help="Window: 30m, 1h, 7d, ...")
@click.option("--by", type=click.Choice(["model", "recipe", "device", "worker"]), default=None)
@click.option("--plot", "plot_file", default=None, help="Also draw the stage breakdown and throughput to a PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats_cmd(state: State, since, by, plot_file, as_json):
    """Images, images/s, failure rate and p50/p95/p99 per stage, from the ledger."""
    from farm.results.stats import STAGES, parse_since, summarise

    start = parse_since(since, datetime.now(timezone.utc))
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
