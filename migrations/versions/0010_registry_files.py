"""users' own files: adapters.layout and adapters.addnet_sha256 (Kohya or diffusers LoRAs and the
hash A1111 links them by), the embeddings registry (textual inversion), and jobs.embeddings (the
embeddings a job's prompts use; [] for every job so far)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # adapters registered before this revision were not looked into: layout and hash unknown
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("layout", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("addnet_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "embeddings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("arch", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("vectors", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("embeddings", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("embeddings")
    op.drop_table("embeddings")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("addnet_sha256")
        batch.drop_column("layout")
