"""`farm replay`: re-render a job from its record and compare with the stored image."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json, warn


@cli.command("replay")
@click.argument("job", type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def replay_cmd(state: State, job, device, as_json):
    """Re-render a job from its record and print the largest pixel difference to the stored image."""
    report = state.farm.replay(job, device)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"job {job}: largest pixel difference {report['max_difference']} "
                   f"({report['differing_values']} of {report['values']} values differ) on {report['device']}")
        for note in report["notes"]:
            warn(note)
