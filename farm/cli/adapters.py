"""`farm adapters add|list|remove`: the LoRA registry (accelerators and styles)."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import State, cli
from farm.cli.entries import print_entries, register, remove_command
from farm.models.catalog import ADAPTER_KINDS, ARCHS


@cli.group("adapters")
def adapters_group():
    """LoRA adapters: accelerators (LCM-LoRA, Lightning, Hyper-SD, Turbo) and styles."""


@adapters_group.command("add")
@click.argument("name")
@click.option("--source", required=True, help="Hub id, local directory or .safetensors file, or s3:// URI.")
@click.option("--weight-name", default=None, help="The .safetensors file inside a hub repo or directory.")
@click.option("--kind", required=True, type=click.Choice(ADAPTER_KINDS))
@click.option("--family", required=True, type=click.Choice(ARCHS), help="The architecture it was trained for.")
@click.option("--recipe", default=None, help="Accelerators: the recipe they serve (default lcm-lora).")
@click.option("--steps", type=int, default=None, help="Lightning/Hyper-SD: the step count it was distilled for.")
@click.option("--guidance-max", type=float, default=None, help="Highest guidance it supports (CFG-preserved LoRAs).")
@click.option("--revision", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def adapters_add(state: State, name, source, weight_name, kind, family, recipe, steps, guidance_max, revision,
                 as_json):
    """Register a LoRA (diffusers/peft or Kohya/A1111 layout); s3:// sources are fetched once.

    A local or s3:// file is read (its header, no weights loaded) and every layer it adapts must
    be a layer of --family, with the same widths, or it is refused and nothing is registered. Its
    sha256 is recorded, and a file registered already under another name is refused."""
    from farm.models.registry import adapter_entry

    entry = adapter_entry(name, source=source, kind=kind, family=family, weight_name=weight_name, recipe=recipe,
                          steps=steps, guidance_max=guidance_max, revision=revision, cwd=Path.cwd())
    register(state, entry, as_json, f"{kind} adapter for {family}")


@adapters_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def adapters_list(state: State, as_json):
    """Built-in and registered adapters."""
    print_entries(state.catalog().adapters.values(), as_json,
                  ("name", "kind", "arch", "recipe", "steps", "layout", "source", "weight_name", "sha256"))


remove_command(adapters_group, "adapter", "Remove a registered adapter.")
