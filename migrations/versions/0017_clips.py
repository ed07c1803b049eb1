"""clips (issue 27): a job's clip settings (frames, fps, motion module, format; NULL on every job
so far: images), and the motion module registry (`farm motion add`)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("clip", sa.JSON(), nullable=True))
    op.create_table(
        "motion_adapters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("arch", sa.String(length=32), nullable=False),
        sa.Column("weight_name", sa.String(length=256), nullable=True),
        sa.Column("recipe", sa.String(length=64), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("beta_schedule", sa.String(length=32), nullable=True),
        sa.Column("revision", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("motion_adapters")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("clip")
