"""`farm motion add|list|remove`: the motion module registry (issue 27, clips)."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import State, cli
from farm.cli.entries import print_entries, register, remove_command
from farm.models.catalog import MOTION_ARCHS


@cli.group("motion")
def motion_group():
    """Motion modules: AnimateDiff's temporal layers, which turn a model into a clip renderer."""


@motion_group.command("add")
@click.argument("name")
@click.option("--source", required=True,
              help="Hub id, local diffusers directory or .safetensors file (diffusers or AnimateDiff keys), or s3:// URI.")
@click.option("--family", required=True, type=click.Choice(MOTION_ARCHS),
              help="The UNet architecture it was trained for.")
@click.option("--weight-name", default=None, help="The .safetensors file inside a hub repo or directory.")
@click.option("--recipe", default=None, type=click.Choice(["animatediff-lightning"]),
              help="An AnimateDiff-Lightning module: it runs with its own recipe, at --steps.")
@click.option("--steps", type=int, default=None, help="The step count a Lightning module is distilled for.")
@click.option("--revision", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def motion_add(state: State, name, source, family, weight_name, recipe, steps, revision, as_json):
    """Register a motion module; s3:// sources are fetched once.

    A local or s3:// source is looked into (a directory's config.json, a file's header; no weights
    are loaded): its temporal layers must be as wide as --family's UNet blocks, or nothing is
    registered. Only .safetensors files are loaded; a file's sha256 is recorded."""
    from farm.models.motion import motion_entry

    entry = motion_entry(name, source=source, family=family, weight_name=weight_name, recipe=recipe, steps=steps,
                         revision=revision, cwd=Path.cwd())
    register(state, entry, as_json, f"motion module for {family}")


@motion_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def motion_list(state: State, as_json):
    """Built-in and registered motion modules."""
    print_entries(state.catalog().motion_adapters.values(), as_json, ("name", "arch", "recipe", "steps", "source",
                                                                       "sha256"))


remove_command(motion_group, "motion", "Remove a registered motion module (jobs already recorded keep their record).")
