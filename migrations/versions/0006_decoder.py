"""decoders: jobs.decoder ("full", the model's VAE, or "tiny", TAESD for previews)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # jobs written before this revision were all decoded by the model's own VAE
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("decoder", sa.String(length=8), nullable=False, server_default="full"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("decoder")
