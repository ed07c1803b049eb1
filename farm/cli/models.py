"""`farm models add|list|remove`: the model registry."""

from __future__ import annotations

from pathlib import Path

import click

from farm.catalog import ARCHS, FAMILIES, MODEL_KINDS
from farm.cli import State, cli, emit_json
from farm.cli.entries import print_entries, register


@cli.group("models")
def models_group():
    """Base models: built-in and registered."""


@models_group.command("add")
@click.argument("name")
@click.option("--source", required=True, help="Hub id (org/name), local directory or .safetensors file, s3:// URI.")
@click.option("--family", required=True, type=click.Choice(FAMILIES))
@click.option("--kind", default="base", show_default=True, type=click.Choice(MODEL_KINDS))
@click.option("--arch", default=None, type=click.Choice(ARCHS), help="Which LoRAs fit (default: the family).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--native-size", type=int, default=None, help="Default image side (default: the family's).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_add(state: State, name, source, family, kind, arch, revision, native_size, as_json):
    """Register a model; s3:// sources are fetched once and their sha256 recorded."""
    from farm.registry import model_entry

    entry = model_entry(name, source=source, family=family, kind=kind, arch=arch, revision=revision,
                        native_size=native_size, cwd=Path.cwd())
    register(state, entry, as_json, f"{kind} {family} model")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_list(state: State, as_json):
    """Built-in and registered models."""
    print_entries(state.catalog().models.values(), as_json, ("name", "family", "kind", "arch", "native_size", "source"))


@models_group.command("remove")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_remove(state: State, name, as_json):
    """Remove a registered model (jobs already recorded keep their record)."""
    state.ledger.remove_registered("model", name)
    emit_json({"removed": name, "what": "model"}) if as_json else click.echo(f"model {name} removed")
