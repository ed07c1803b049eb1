"""Registry commands: farm models add|list|remove, farm adapters add|list|remove."""

from __future__ import annotations

from pathlib import Path

import click

from farm.catalog import ADAPTER_KINDS, ARCHS, FAMILIES, MODEL_KINDS
from farm.cli import State, cli, emit_json


def _fetch_digest(state: State, name: str, source: str) -> str | None:
    """An s3:// source is fetched once now, into this machine's cache, to record its sha256."""
    if not source.startswith("s3://"):
        return None
    from farm.fetch import fetch_s3

    fetched = fetch_s3(source, state.config.model_cache, name=name, endpoint_url=state.config.s3_endpoint_url)
    return fetched.sha256


def _register(state: State, entry, as_json: bool, description: str) -> None:
    digest = _fetch_digest(state, entry.name, entry.source)
    add = state.ledger.add_model if hasattr(entry, "family") else state.ledger.add_adapter
    add(entry, sha256=digest)
    if as_json:
        emit_json({**entry.as_dict(), "sha256": digest})
    else:
        click.echo(f"{entry.name}: {entry.source} ({description})" + (f", sha256 {digest[:16]}" if digest else ""))


def _print_entries(entries, as_json: bool, columns: tuple[str, ...]) -> None:
    rows = [e.as_dict() for e in entries]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo("  ".join(f"{row[c] if row[c] is not None else '-'}" for c in columns))


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
    _register(state, entry, as_json, f"{kind} {family} model")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_list(state: State, as_json):
    """Built-in and registered models."""
    _print_entries(state.catalog().models.values(), as_json, ("name", "family", "kind", "arch", "native_size", "source"))


@models_group.command("remove")
@click.argument("name")
@click.pass_obj
def models_remove(state: State, name):
    """Remove a registered model (jobs already recorded keep their record)."""
    state.ledger.remove_registered("model", name)
    click.echo(f"model {name} removed")


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
    """Register a LoRA; s3:// sources are fetched once and their sha256 recorded."""
    from farm.registry import adapter_entry

    entry = adapter_entry(name, source=source, kind=kind, family=family, weight_name=weight_name, recipe=recipe,
                          steps=steps, guidance_max=guidance_max, revision=revision, cwd=Path.cwd())
    _register(state, entry, as_json, f"{kind} adapter for {family}")


@adapters_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def adapters_list(state: State, as_json):
    """Built-in and registered adapters."""
    _print_entries(state.catalog().adapters.values(), as_json,
                   ("name", "kind", "arch", "recipe", "steps", "source", "weight_name"))


@adapters_group.command("remove")
@click.argument("name")
@click.pass_obj
def adapters_remove(state: State, name):
    """Remove a registered adapter."""
    state.ledger.remove_registered("adapter", name)
    click.echo(f"adapter {name} removed")
