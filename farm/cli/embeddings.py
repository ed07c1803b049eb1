"""`farm embeddings add|list|remove`: textual-inversion embeddings (A1111 .safetensors files)."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli import State, cli
from farm.cli.entries import print_entries, register, remove_command
from farm.models.catalog import ARCHS


@cli.group("embeddings")
def embeddings_group():
    """Textual-inversion embeddings: prompts use them by their token."""


@embeddings_group.command("add")
@click.argument("name")
@click.option("--source", required=True, help="The embedding's .safetensors file (local path or s3:// URI).")
@click.option("--family", required=True, type=click.Choice(ARCHS), help="The architecture it was trained for.")
@click.option("--token", default=None, help="The word prompts use it by (default: NAME, as A1111 does).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def embeddings_add(state: State, name, source, family, token, as_json):
    """Register an embedding: its vectors must be as wide as --family's text encoders (SD1.5: one
    tensor [n, 768]; SDXL: clip_l [n, 768] and clip_g [n, 1280]), or nothing is registered."""
    from farm.models.registry import embedding_entry

    entry = embedding_entry(name, source=source, family=family, token=token, cwd=Path.cwd())
    register(state, entry, as_json, f"embedding for {family}, token {entry.token}")


@embeddings_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def embeddings_list(state: State, as_json):
    """Registered embeddings."""
    print_entries(state.catalog().embeddings.values(), as_json, ("name", "token", "arch", "vectors", "source", "sha256"))


remove_command(embeddings_group, "embedding",
               "Remove a registered embedding (jobs already recorded keep their record).")
