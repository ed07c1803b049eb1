"""`farm models add|list|remove|bind`: the model registry, and models bound to their own accelerator."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import State, cli, emit_json
from farm.cli.entries import print_entries, register, remove_command
from farm.errors import InputError
from farm.models.catalog import ARCHS, FAMILIES, MODEL_KINDS


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
    """Register a model; s3:// sources are fetched once and their sha256 recorded.

    A local or s3:// source is looked into first: a .safetensors file must be a single-file
    checkpoint (the original LDM layout A1111 and Civitai use) of --family and --arch, and a
    directory's configs must say so too; anything else is refused and nothing is registered."""
    from farm.models.registry import model_entry

    entry = model_entry(name, source=source, family=family, kind=kind, arch=arch, revision=revision,
                        native_size=native_size, cwd=Path.cwd())
    single = ", single file" if entry.layout == "single-file" else ""
    register(state, entry, as_json, f"{kind} {family} model{single}")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_list(state: State, as_json):
    """Built-in and registered models."""
    print_entries(state.catalog().models.values(), as_json,
                  ("name", "family", "kind", "arch", "native_size", "source", "sha256"))


remove_command(models_group, "model", "Remove a registered model (jobs already recorded keep their record).")


@models_group.command("bind")
@click.argument("model")
@click.argument("adapter", required=False)
@click.option("--recipe", default="lcm-lora", show_default=True, help="The recipe that picks the adapter.")
@click.option("--unbind", is_flag=True, help="Remove the model's binding for the recipe.")
@click.option("--json", "as_json", is_flag=True, help="Print {model, recipe, adapter} (adapter null after --unbind).")
@click.pass_obj
def models_bind(state: State, model, adapter, recipe, unbind, as_json):
    """Bind MODEL to its own accelerator ADAPTER (e.g. an LCM-LoRA made with `farm distill`):
    the recipe picks it for this model instead of the arch's default."""
    if unbind:
        state.farm.unbind_accelerator(model, recipe)
        adapter = None
    elif adapter is None:
        raise InputError("adapter", "give the ADAPTER to bind (or --unbind)")
    else:
        state.farm.bind_accelerator(model, adapter, recipe=recipe)
    if as_json:
        emit_json({"model": model, "recipe": recipe, "adapter": adapter})
    elif adapter is None:
        click.echo(f"{model}: the {recipe} recipe picks the arch's accelerator again")
    else:
        click.echo(f"{model}: the {recipe} recipe now loads {adapter}")
