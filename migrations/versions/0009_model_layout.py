"""models.layout: "diffusers" (a directory or hub repo) or "single-file" (one checkpoint in the
original LDM layout, loaded with the arch's local config)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("layout", sa.String(length=16), nullable=False, server_default="diffusers"))
    # models registered before this revision: only a .safetensors source is a single file
    op.execute("UPDATE models SET layout = 'single-file' WHERE source LIKE '%.safetensors'")


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("layout")
