"""jobs that start from images (issue 13): the jobs' input images (sha256 of their stored PNGs) and
the settings of the image kinds (NULL, or 0 for mask_blur, on every job so far: txt2img), and the
ControlNet registry (`farm controlnets add`)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("init_image", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("mask_image", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("control_image", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("strength", sa.Float(), nullable=True))
        batch.add_column(sa.Column("mask_blur", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("controlnet", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("control_scale", sa.Float(), nullable=True))
        batch.add_column(sa.Column("control_preprocess", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("upscale", sa.Float(), nullable=True))
    op.create_table(
        "controlnets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("arch", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("layout", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("controlnets")
    with op.batch_alter_table("jobs") as batch:
        for column in ("upscale", "control_preprocess", "control_scale", "controlnet", "mask_blur", "strength",
                       "control_image", "mask_image", "init_image"):
            batch.drop_column(column)
