"""Alembic environment: runs against the connection the farm hands over, or FARM_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from farm.ledger.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTER
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from farm.config import load_config

    url = context.config.get_main_option("sqlalchemy.url") or load_config().database_url
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
