"""workers.models: the models a worker serves (its queues), so a wait can tell that no live
worker serves a batch's model; ["*"]: every model, including ones registered later

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # workers registered before this revision said nothing: taken as serving every model
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("models", sa.JSON(), nullable=False, server_default='["*"]'))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("models")
