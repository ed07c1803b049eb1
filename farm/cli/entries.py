"""What `farm models`, `farm adapters`, `farm embeddings` and `farm controlnets` share: registering
an entry (``Farm.register`` looks into its file), printing a catalog."""

from __future__ import annotations

import click

from farm.cli import State, emit_json
from farm.models.catalog import AdapterEntry, ControlNetEntry, EmbeddingEntry, ModelEntry, MotionAdapterEntry


def what_of(entry) -> str:
    return {ModelEntry: "model", AdapterEntry: "adapter", EmbeddingEntry: "embedding",
            ControlNetEntry: "controlnet", MotionAdapterEntry: "motion"}[type(entry)]


def register(state: State, entry, as_json: bool, description: str) -> None:
    what = what_of(entry)
    entry = state.farm.register(entry)
    if as_json:
        emit_json(entry.as_dict())
    else:
        layout = f", {entry.layout} layout" if what == "adapter" and entry.layout else ""
        click.echo(f"{entry.name}: {entry.source} ({description}{layout})"
                   + (f", sha256 {entry.sha256}" if entry.sha256 else ""))


def print_entries(entries, as_json: bool, columns: tuple[str, ...]) -> None:
    rows = [e.as_dict() for e in entries]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo("  ".join(f"{row[c] if row[c] is not None else '-'}" for c in columns))


def remove_command(group: click.Group, what: str, doc: str) -> None:
    """`farm models|adapters|embeddings|controlnets remove NAME`: the same for every registry."""
    @group.command("remove", help=doc)
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def remove(state: State, name, as_json):
        state.farm.unregister(what, name)
        emit_json({"removed": name, "what": what}) if as_json else click.echo(f"{what} {name} removed")
