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
    from farm.ledger import Ledger
    from farm.ledger.ledger import current_revision, upgrade

    ledger = Ledger(state.config.database_url, auto_migrate=False)
    try:
        before = current_revision(ledger.engine)
        upgrade(ledger.engine, revision)
        after = current_revision(ledger.engine)
    finally:
        ledger.close()
    if as_json:
        emit_json({"ledger": ledger.safe_url, "before": before, "after": after})
    else:
        click.echo(f"ledger {ledger.safe_url}: {before or 'empty'} -> {after}")


@db_group.command("current")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def db_current(state: State, as_json):
    """Show the ledger's schema revision and the newest one this farm knows."""
    from farm.ledger import Ledger
    from farm.ledger.ledger import current_revision, head_revision

    ledger = Ledger(state.config.database_url, auto_migrate=False)
    try:
        current = current_revision(ledger.engine)
        if as_json:
            emit_json({"current": current, "head": head_revision()})
        else:
            click.echo(f"current {current or 'empty'}, head {head_revision()}")
    finally:
        ledger.close()
