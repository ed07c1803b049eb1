"""`farm controlnets add|list|remove`: the ControlNet registry (issue 13)."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import State, cli
from farm.cli.entries import print_entries, register, remove_command
from farm.models.catalog import CONTROLNET_ARCHS


@cli.group("controlnets")
def controlnets_group():
    """ControlNets: steer renders with a control image (edges, depth, pose)."""


@controlnets_group.command("add")
@click.argument("name")
@click.option("--source", required=True,
              help="Hub id, local diffusers directory or .safetensors file (diffusers or LDM keys), or s3:// URI.")
@click.option("--family", required=True, type=click.Choice(CONTROLNET_ARCHS),
              help="The UNet architecture it was trained for.")
@click.option("--revision", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def controlnets_add(state: State, name, source, family, revision, as_json):
    """Register a ControlNet; s3:// sources are fetched once.

    A local or s3:// source is looked into (a directory's config.json, a file's header; no weights
    are loaded): it must be a ControlNet whose cross-attention is as wide as --family's, or nothing
    is registered. A single file's sha256 is recorded (and written into PNGs as A1111 does)."""
    from farm.models.controlnets import controlnet_entry

    entry = controlnet_entry(name, source=source, family=family, revision=revision, cwd=Path.cwd())
    register(state, entry, as_json, f"ControlNet for {family}")


@controlnets_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def controlnets_list(state: State, as_json):
    """Built-in and registered ControlNets."""
    print_entries(state.catalog().controlnets.values(), as_json, ("name", "arch", "layout", "source", "sha256"))


remove_command(controlnets_group, "controlnet",
               "Remove a registered ControlNet (jobs already recorded keep their record).")
