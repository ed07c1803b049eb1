"""What `farm models` and `farm adapters` share: registering an entry, printing a catalog."""

from __future__ import annotations

import click

from farm.cli import State, emit_json


def fetch_digest(state: State, name: str, source: str) -> str | None:
    """An s3:// source is fetched once now, into this machine's cache, to record its sha256."""
    if not source.startswith("s3://"):
        return None
    from farm.fetch import fetch_s3

    fetched = fetch_s3(source, state.config.model_cache, name=name, endpoint_url=state.config.s3_endpoint_url)
    return fetched.sha256


def register(state: State, entry, as_json: bool, description: str) -> None:
    digest = fetch_digest(state, entry.name, entry.source)
    add = state.ledger.add_model if hasattr(entry, "family") else state.ledger.add_adapter
    add(entry, sha256=digest)
    if as_json:
        emit_json({**entry.as_dict(), "sha256": digest})
    else:
        click.echo(f"{entry.name}: {entry.source} ({description})" + (f", sha256 {digest[:16]}" if digest else ""))


def print_entries(entries, as_json: bool, columns: tuple[str, ...]) -> None:
    rows = [e.as_dict() for e in entries]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo("  ".join(f"{row[c] if row[c] is not None else '-'}" for c in columns))
