"""fair share between tenants (issue 24): what each job costs, what each tenant has had

``jobs.cost_ms``: the GPU milliseconds a job is charged: an estimate from recorded timings when
it is submitted (quotas reserve against it) and again when the dispatcher publishes it, replaced
by the attempts' measured time once it finishes (``jobs.settled``). ``attempts.gpu_ms``: the
attempt's share of its pipeline call (what a GPU was busy with for it; encoding and upload run
beside the GPU and are not in it). ``tenants.vfinish``: the tenant's virtual finish time in the
fair order (start-time fair queueing, GPU-seconds divided by weight). ``workers.busy_ms``: the
time a worker spent in pipeline calls, counted by the worker itself, against which the per-tenant
accounting is checked. The index finds jobs waiting for the dispatcher without scanning every
queued job.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cost_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("settled", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_jobs_state_enqueued", ["state", "enqueued_at"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("gpu_ms", sa.Float(), nullable=True))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("vfinish", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("busy_ms", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("busy_ms")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("vfinish")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("gpu_ms")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_state_enqueued")
        batch.drop_column("settled")
        batch.drop_column("cost_ms")
