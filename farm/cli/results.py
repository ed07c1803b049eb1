"""`farm results get|sheet|url`: a batch's images, its contact sheet, presigned links."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import State, cli, emit_json
from farm.jobs.values import parse_duration as parse_duration_in


@cli.group("results")
def results_group():
    """Fetch rendered images."""


@results_group.command("get")
@click.argument("batch")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def results_get(state: State, batch, out, as_json):
    """Copy a batch's images (verified by sha256) into a directory, with an index.html gallery."""
    paths = state.farm.download(batch, out)
    if as_json:
        emit_json({"batch": batch, "outputs": [str(p) for p in paths], "gallery": str(Path(out) / "index.html")})
    else:
        click.echo(f"{len(paths)} images written to {out} (gallery: {Path(out) / 'index.html'})")


@results_group.command("sheet")
@click.argument("batch")
@click.option("--out", "-o", "out", required=True, help="PNG file to write.")
@click.option("--cols", default=None, help="Axis across (default: the first axis that varies).")
@click.option("--rows", default=None, help="Axis down (default: every other varying axis).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def results_sheet(state: State, batch, out, cols, rows, as_json):
    """A contact sheet: the batch as a grid labelled with its axis values."""
    report = state.farm.contact_sheet(batch, out, cols=cols, rows=rows)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"{out}: {report['columns']} x {report['rows']} grid ({report['column_axis']} across, "
                   f"{report['row_axis']} down), {report['size'][0]}x{report['size'][1]} px")


MAX_URL_EXPIRY_S = 7 * 24 * 3600  # S3's own ceiling for presigned URLs


def parse_duration(text: str) -> int:
    return parse_duration_in("expires", text, 1, MAX_URL_EXPIRY_S, examples="15m, 2h or 900", bounds="1s..7d")


@results_group.command("url")
@click.argument("job", type=int)
@click.option("--expires", default="15m", show_default=True, help="How long the link works (at most 7d).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def url_cmd(state: State, job, expires, as_json):
    """A GET-only presigned URL for a job's image (s3:// stores)."""
    seconds = parse_duration(expires)
    link = state.farm.image_url(job, seconds)
    emit_json({"job": job, "url": link, "expires_s": seconds}) if as_json else click.echo(link)
