"""training jobs (issue 14): the jobs' training settings, their progress, checkpoints and
evaluations (``trainings``), provenance and LCM solver steps on registered adapters and models, and
models bound to their own accelerator

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("training", sa.JSON(), nullable=True))
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("original_steps", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("provenance", sa.String(length=128), nullable=True))
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("provenance", sa.String(length=128), nullable=True))
    op.create_table(
        "accelerator_bindings",
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("recipe", sa.String(length=64), nullable=False),
        sa.Column("adapter", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "recipe"),
    )
    op.create_table(
        "trainings",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("steps_per_s", sa.Float(), nullable=True),
        sa.Column("eta_s", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checkpoint_key", sa.String(length=1024), nullable=True),
        sa.Column("checkpoint_step", sa.Integer(), nullable=True),
        sa.Column("resumed_from", sa.Integer(), nullable=True),
        sa.Column("evaluation", sa.JSON(), nullable=True),
        sa.Column("result", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id"),
    )


def downgrade() -> None:
    op.drop_table("trainings")
    op.drop_table("accelerator_bindings")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("provenance")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("provenance")
        batch.drop_column("original_steps")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("training")
