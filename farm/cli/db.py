"""`farm db upgrade|current`: the ledger's schema (Alembic migrations)."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json


@cli.group("db")
def db_group():
    """Ledger schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def db_upgrade(state: State, revision, as_json):
    """Apply migrations to FARM_DATABASE_URL (or the farm home's SQLite file)."""
    done = state.farm.schema(upgrade_to=revision)
    if as_json:
        emit_json({"ledger": done["ledger"], "before": done["before"], "after": done["after"]})
    else:
        click.echo(f"ledger {done['ledger']}: {done['before'] or 'empty'} -> {done['after']}")


@db_group.command("current")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def db_current(state: State, as_json):
    """Show the ledger's schema revision and the newest one this farm knows."""
    schema = state.farm.schema()
    if as_json:
        emit_json({"current": schema["after"], "head": schema["head"]})
    else:
        click.echo(f"current {schema['after'] or 'empty'}, head {schema['head']}")
