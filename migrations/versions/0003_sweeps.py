"""sweeps: job axes, reuse by digest, attempt environment

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("axes", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("reused_from", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("environment", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("environment")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reused_from")
        batch.drop_column("axes")
