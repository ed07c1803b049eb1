"""What `farm models`, `farm adapters` and `farm embeddings` share: registering an entry,
printing a catalog."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from farm.catalog import AdapterEntry, ControlNetEntry, EmbeddingEntry, ModelEntry
from farm.cli import State, emit_json
from farm.errors import ConflictError, InputError


def what_of(entry) -> str:
    return {ModelEntry: "model", AdapterEntry: "adapter", EmbeddingEntry: "embedding",
            ControlNetEntry: "controlnet"}[type(entry)]


def with_weights(state: State, entry):
    """The entry with what its weight file says: an s3:// source is fetched once now, into this
    machine's cache, to record its sha256; a file (local, or fetched) is read and checked against
    the entry's arch, and hashed. Hub ids are not looked into (workers fetch them)."""
    from farm.registry import weight_file, with_file

    root = None
    if entry.source.startswith("s3://"):
        from farm.fetch import fetch_s3

        fetched = fetch_s3(entry.source, state.config.model_cache, name=entry.name,
                           endpoint_url=state.config.s3_endpoint_url)
        root = fetched.path
        # what a worker's fetch is verified against: the file's sha256, or a directory's manifest
        entry = replace(entry, sha256=fetched.sha256)
    if isinstance(entry, ControlNetEntry):  # issue 13: a directory's config or a file's header
        from farm.controlnets import with_file as controlnet_with_file

        local = root if root is not None else (Path(entry.source) if Path(entry.source).is_absolute() else None)
        return entry if local is None else controlnet_with_file(entry, local, entry.sha256)
    path = weight_file(entry, root)
    if path is None:
        return entry
    try:
        checked = with_file(entry, path)
    except InputError as exc:  # named by its source, not by where this machine cached it
        if root is None:
            raise
        raise InputError(None, str(exc).replace(str(root), entry.source)) from None
    return replace(checked, sha256=entry.sha256) if root is not None else checked


def register(state: State, entry, as_json: bool, description: str) -> None:
    what = what_of(entry)
    catalog = state.catalog()
    known = {"model": catalog.models, "adapter": catalog.adapters, "embedding": catalog.embeddings,
             "controlnet": catalog.controlnets}[what]
    if entry.name in known:  # before hashing a large file (the ledger checks again as it writes)
        raise ConflictError(f"{what} {entry.name} is already registered (remove it first)")
    entry = with_weights(state, entry)
    if what == "embedding":
        state.ledger.add_embedding(entry)
    elif what == "controlnet":
        state.ledger.add_controlnet(entry)
    else:
        (state.ledger.add_model if what == "model" else state.ledger.add_adapter)(entry)
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
        state.ledger.remove_registered(what, name)
        emit_json({"removed": name, "what": what}) if as_json else click.echo(f"{what} {name} removed")
