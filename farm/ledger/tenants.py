"""Tenants, API keys and who uploaded which input (issue 23). Keys are stored as their HMAC
(farm.tenancy.keys), found by their public prefix."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from farm.errors import ConflictError, NotFound
from farm.jobs import states
from farm.ledger.batches import usage_of
from farm.ledger.models import ApiKey, Artifact, Attempt, Batch, Job, Tenant, TenantInput
from farm.ledger.schema import Database
from farm.tenancy.quotas import Usage

LOCAL_TENANT = "local"
TOUCH_EVERY_S = 60.0  # a key's last use is written at most this often (not on every request)


@dataclass(frozen=True)
class TenantInfo:
    name: str
    created_at: datetime
    weight: float
    s3_prefixes: tuple[str, ...]
    quotas: dict | None

    def as_dict(self) -> dict:
        return {"tenant": self.name, "created_at": self.created_at.isoformat(), "weight": self.weight,
                "s3_prefixes": list(self.s3_prefixes), "quotas": self.quotas}


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    key_hash: str
    tenant: str
    scopes: tuple[str, ...]
    label: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_dict(self) -> dict:  # never the hash
        return {"prefix": self.prefix, "tenant": self.tenant, "scopes": list(self.scopes), "label": self.label,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
                "revoked": self.revoked_at is not None}


def _tenant(row: Tenant) -> TenantInfo:
    return TenantInfo(row.name, row.created_at, float(row.weight), tuple(row.s3_prefixes or ()), row.quotas)


def _key(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.prefix, row.key_hash, row.tenant, tuple(sorted(row.scopes.split(","))), row.label,
                   row.created_at, row.expires_at, row.last_used_at, row.revoked_at)


class Tenants(Database):
    def tenant(self, name: str) -> TenantInfo | None:
        with self.session() as s:
            row = s.get(Tenant, name)
            return _tenant(row) if row is not None else None

    def tenants(self) -> list[TenantInfo]:
        with self.session() as s:
            return [_tenant(r) for r in s.scalars(select(Tenant).order_by(Tenant.name))]

    def ensure_tenant(self, name: str) -> TenantInfo:
        """The tenant, made (weight 1, no s3:// prefixes) if it is new."""
        existing = self.tenant(name)
        if existing is not None:
            return existing
        try:
            with self.session() as s:
                s.add(Tenant(name=name, created_at=self.clock(), weight=1.0, s3_prefixes=[], quotas=None))
        except IntegrityError:
            pass  # made by a concurrent call
        found = self.tenant(name)
        assert found is not None
        return found

    def set_tenant(self, name: str, *, weight: float | None = None, s3_prefixes: list[str] | None = None,
                   quotas: dict | None = None) -> TenantInfo:
        """Change a tenant (made if new); ``quotas`` replace its quotas ({}: none)."""
        self.ensure_tenant(name)
        values: dict = {}
        if weight is not None:
            values["weight"] = weight
        if quotas is not None:
            values["quotas"] = quotas or None
        if s3_prefixes is not None:
            values["s3_prefixes"] = list(s3_prefixes)
        if values:
            with self.session() as s:
                s.execute(update(Tenant).where(Tenant.name == name).values(**values))
        found = self.tenant(name)
        assert found is not None
        return found

    # -- keys -----------------------------------------------------------------------------------------
    def add_key(self, *, prefix: str, key_hash: str, tenant: str, scopes: frozenset[str], label: str = "",
                expires_at: datetime | None = None) -> KeyInfo:
        self.ensure_tenant(tenant)
        try:
            with self.session() as s:
                row = ApiKey(prefix=prefix, key_hash=key_hash, tenant=tenant, scopes=",".join(sorted(scopes)),
                             label=label, created_at=self.clock(), expires_at=expires_at)
                s.add(row)
                s.flush()
                return _key(row)
        except IntegrityError:
            raise ConflictError(f"a key with prefix {prefix} exists already") from None

    def key(self, prefix: str) -> KeyInfo | None:
        with self.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            return _key(row) if row is not None else None

    def keys(self, tenant: str | None = None) -> list[KeyInfo]:
        with self.session() as s:
            query = select(ApiKey).order_by(ApiKey.id)
            if tenant is not None:
                query = query.where(ApiKey.tenant == tenant)
            return [_key(r) for r in s.scalars(query)]

    def revoke_key(self, prefix: str) -> KeyInfo:
        with self.session() as s:
            s.execute(update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
                      .values(revoked_at=self.clock()))
        found = self.key(prefix)
        if found is None:
            raise NotFound(f"no key {prefix!r}")
        return found

    def touch_key(self, prefix: str, now: datetime) -> None:
        """Record a key's use, at most once a minute."""
        with self.session() as s:
            s.execute(update(ApiKey).where(ApiKey.prefix == prefix).where(
                ApiKey.last_used_at.is_(None) | (ApiKey.last_used_at < now - timedelta(seconds=TOUCH_EVERY_S)))
                .values(last_used_at=now))

    # -- inputs a tenant uploaded ----------------------------------------------------------------------
    def add_tenant_input(self, tenant: str, sha256: str) -> None:
        self.ensure_tenant(tenant)
        try:
            with self.session() as s:
                s.add(TenantInput(tenant=tenant, sha256=sha256, created_at=self.clock()))
        except IntegrityError:
            pass  # uploaded before: the same content

    def tenant_has_input(self, tenant: str, sha256: str) -> bool:
        with self.session() as s:
            return s.get(TenantInput, (tenant, sha256)) is not None

    # -- what tenants use (issue 24) -------------------------------------------------------------------
    def tenant_usage(self, name: str) -> Usage:
        """What counts against the tenant's quotas now (farm.tenancy.quotas)."""
        with self.transaction() as conn:
            return usage_of(conn, name, self.clock())

    def tenant_costs(self, since: datetime, until: datetime | None = None) -> list[dict]:
        """Per tenant, over [since, until): images rendered (not reused), GPU-seconds (attempts'
        measured share of their pipeline calls), failed jobs, failed attempts, and bytes of the
        images stored."""
        until = until or self.clock()
        with self.session() as s:
            gpu = dict(s.execute(
                select(Batch.tenant, func.coalesce(func.sum(Attempt.gpu_ms), 0.0)).select_from(Attempt)
                .join(Job, Job.id == Attempt.job_id).join(Batch, Batch.id == Job.batch_id)
                .where(Attempt.finished_at >= since, Attempt.finished_at < until).group_by(Batch.tenant)).all())
            failed_attempts = dict(s.execute(
                select(Batch.tenant, func.count()).select_from(Attempt).join(Job, Job.id == Attempt.job_id)
                .join(Batch, Batch.id == Job.batch_id)
                .where(Attempt.finished_at >= since, Attempt.finished_at < until,
                       Attempt.outcome.not_in([states.ATTEMPT_SUCCEEDED, states.ATTEMPT_RUNNING]))
                .group_by(Batch.tenant)).all())
            finished = s.execute(
                select(Batch.tenant, Job.state, func.count(), func.coalesce(func.sum(Artifact.bytes), 0))
                .join(Batch, Batch.id == Job.batch_id).outerjoin(Artifact, Artifact.job_id == Job.id)
                .where(Job.finished_at >= since, Job.finished_at < until, Job.reused_from.is_(None),
                       Job.state.in_([states.SUCCEEDED, states.FAILED]))
                .group_by(Batch.tenant, Job.state)).all()
        rows: dict[str, dict] = {}

        def row(tenant: str) -> dict:
            return rows.setdefault(tenant, {"tenant": tenant, "images": 0, "gpu_seconds": 0.0, "failed_jobs": 0,
                                            "failed_attempts": 0, "bytes_stored": 0})
        for tenant, ms in gpu.items():
            row(tenant)["gpu_seconds"] = round(float(ms or 0.0) / 1000.0, 3)
        for tenant, count in failed_attempts.items():
            row(tenant)["failed_attempts"] = int(count)
        for tenant, state, count, stored in finished:
            if state == states.SUCCEEDED:
                row(tenant)["images"] += int(count)
                row(tenant)["bytes_stored"] += int(stored or 0)
            else:
                row(tenant)["failed_jobs"] += int(count)
        return sorted(rows.values(), key=lambda r: r["tenant"])

