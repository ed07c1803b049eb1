"""tenants and API keys (issue 23): who may use a shared farm, and whose each batch is

``tenants`` (name, weight and quotas for fair share, the s3:// prefixes the operator allows it to
name), ``api_keys`` (a public prefix to find a key by, an HMAC of the whole key, never the key;
scopes, expiry, last use, revocation), ``tenant_inputs`` (which tenant uploaded which input image:
a content id is usable only by a tenant that uploaded it), and the tenant of every batch (the
operator's own CLI is tenant ``local``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False, server_default="1"),
        sa.Column("s3_prefixes", sa.JSON(), nullable=True),
        sa.Column("quotas", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(tenants, [{"name": "local", "created_at": datetime.now(timezone.utc), "weight": 1.0,
                              "s3_prefixes": [], "quotas": None}])
    op.create_table(
        "api_keys",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_table(
        "tenant_inputs",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"]),
        sa.PrimaryKeyConstraint("tenant", "sha256"),
    )
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), nullable=False, server_default="local"))
        batch.create_index("ix_batches_tenant_created", ["tenant", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_tenant_created")
        batch.drop_column("tenant")
    op.drop_table("tenant_inputs")
    op.drop_table("api_keys")
    op.drop_table("tenants")
