"""The events outbox and webhook endpoints in the ledger (issue 25).

An event is inserted by the statement sequence of the state change it reports, in the same
transaction (``record``), so "at least once" survives a crash: no commit, no event; a commit,
its events. Ids must also be in commit order, or a reader resuming after id N could miss an
event with a smaller id that committed later: on PostgreSQL ``record`` first takes a transaction
advisory lock (held to the commit, and the insert is the last statement of its transaction, so
it serialises only the tail of a commit); SQLite serialises writers anyway.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import func, insert, select, text, update

from farm.errors import NotFound
from farm.jobs import events as types
from farm.jobs import states
from farm.ledger.models import BATCHES, EVENTS, JOBS, Event, WebhookDelivery, WebhookEndpoint
from farm.ledger.schema import Database, rowcount
from farm.ledger.values import DeliveryInfo, WebhookInfo
from farm.ledger.values import Event as EventValue

OUTBOX_LOCK = 0x6661726D  # "farm": the advisory lock id that orders the outbox's inserts
OPEN = (states.QUEUED, states.RUNNING)


def lock_outbox(conn) -> None:
    """Take the outbox's lock until this transaction ends (PostgreSQL; a no-op elsewhere)."""
    dialect = getattr(conn, "dialect", None) or conn.get_bind().dialect  # a Core connection or an ORM session
    if dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": OUTBOX_LOCK})


def record(conn, now: datetime, rows: list[dict]) -> None:
    """Insert events (dicts of type, tenant, batch_id, body) in the caller's transaction."""
    if rows:
        lock_outbox(conn)
        conn.execute(insert(EVENTS), [{"created_at": now, **row} for row in rows])


def batch_tenants(conn, batch_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(batch_ids))
    if not ids:
        return {}
    return dict(conn.execute(select(BATCHES.c.id, BATCHES.c.tenant).where(BATCHES.c.id.in_(ids))).all())


def finished(conn, batch_ids: Iterable[str]) -> list[dict]:
    """``batch.finished`` events for those of these batches with no queued or running job left.
    Takes the outbox's lock first: of two transactions finishing a batch's last two jobs, the one
    that takes it second sees the other's commit (READ COMMITTED), so exactly one reports it."""
    ids = sorted(set(batch_ids))
    if not ids:
        return []
    lock_outbox(conn)
    rows = conn.execute(select(JOBS.c.batch_id, JOBS.c.state, func.count()).where(JOBS.c.batch_id.in_(ids))
                        .group_by(JOBS.c.batch_id, JOBS.c.state)).all()
    counts: dict[str, dict[str, int]] = {b: {} for b in ids}
    for batch_id, state, n in rows:
        counts[batch_id][state] = n
    tenants = batch_tenants(conn, ids)
    return [{"type": types.BATCH_FINISHED, "tenant": tenants.get(b, "local"), "batch_id": b,
             "body": {"batch": b, "counts": {s: c.get(s, 0) for s in sorted(states.TERMINAL)},
                      "jobs": sum(c.values())}}
            for b, c in counts.items() if c and not any(c.get(s) for s in OPEN)]


def job_event(kind: str, tenant: str, row, **extra) -> dict:
    """A job's event from a row with its id, batch_id, index and seed."""
    return {"type": kind, "tenant": tenant, "batch_id": row.batch_id,
            "body": {"job": row.id, "batch": row.batch_id, "index": row.index, "seed": row.seed, **extra}}


def _event(row: Event) -> EventValue:
    return EventValue(row.id, row.type, row.tenant, row.batch_id, row.created_at, dict(row.body or {}))


def _webhook(row: WebhookEndpoint) -> WebhookInfo:
    return WebhookInfo(row.id, row.tenant, row.url, tuple(row.events.split(",")), row.batch_id, row.created_at,
                       row.cursor, row.failures, row.next_attempt_at)


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes, base64."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Events(Database):
    # -- reading the outbox -------------------------------------------------------------------------
    def events_after(self, after: int, *, tenant: str | None = None, batch: str | None = None,
                     kinds: Iterable[str] | None = None, limit: int = 500) -> list[EventValue]:
        """Events with an id above ``after``, oldest first; of one tenant (None: all) and batch."""
        query = select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
        if tenant is not None:
            query = query.where(Event.tenant == tenant)
        if batch is not None:
            query = query.where(Event.batch_id == batch)
        wanted = [k for k in (kinds or ()) if k != "*"]
        if wanted:
            query = query.where(Event.type.in_(wanted))
        with self.session() as s:
            return [_event(row) for row in s.scalars(query)]

    def last_event_id(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.max(Event.id))) or 0

    def first_event_of_batch(self, batch: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(func.min(Event.id)).where(Event.batch_id == batch))

    def throughput(self, since: datetime, *, tenant: str | None = None, bucket_s: int = 60) -> list[dict]:
        """Images finished per ``bucket_s`` since ``since`` (from ``job.succeeded`` events)."""
        query = select(Event.created_at).where(Event.type == types.JOB_SUCCEEDED, Event.created_at >= since)
        if tenant is not None:
            query = query.where(Event.tenant == tenant)
        buckets: dict[int, int] = {}
        start = since.timestamp()
        with self.session() as s:
            for (at,) in s.execute(query):
                slot = int((at.timestamp() - start) // bucket_s)
                buckets[slot] = buckets.get(slot, 0) + 1
        slots = int((self.clock().timestamp() - start) // bucket_s) + 1
        return [{"start": datetime.fromtimestamp(start + i * bucket_s, since.tzinfo).isoformat(),
                 "images": buckets.get(i, 0)} for i in range(max(slots, 0))]

    # -- webhook endpoints --------------------------------------------------------------------------
    def add_webhook(self, *, tenant: str, url: str, kinds: tuple[str, ...], batch: str | None) -> tuple[WebhookInfo, str]:
        """A new endpoint and its secret. It receives events from now on; one scoped to a batch,
        that batch's events from its first."""
        secret = new_secret()
        with self.session() as s:
            cursor = s.scalar(select(func.max(Event.id))) or 0
            if batch is not None:
                first = s.scalar(select(func.min(Event.id)).where(Event.batch_id == batch))
                cursor = first - 1 if first is not None else cursor
            row = WebhookEndpoint(tenant=tenant, url=url, secret=secret, events=",".join(kinds), batch_id=batch,
                                  created_at=self.clock(), cursor=cursor, failures=0)
            s.add(row)
            s.flush()
            return _webhook(row), secret

    def webhooks(self, tenant: str | None = None) -> list[WebhookInfo]:
        query = select(WebhookEndpoint).where(WebhookEndpoint.removed_at.is_(None)).order_by(WebhookEndpoint.id)
        if tenant is not None:
            query = query.where(WebhookEndpoint.tenant == tenant)
        with self.session() as s:
            return [_webhook(row) for row in s.scalars(query)]

    def webhook(self, endpoint_id: int, tenant: str | None = None) -> WebhookInfo:
        with self.session() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            if row is None or row.removed_at is not None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no webhook {endpoint_id}")
            return _webhook(row)

    def webhook_secret(self, endpoint_id: int) -> str:
        with self.session() as s:
            return s.scalar(select(WebhookEndpoint.secret).where(WebhookEndpoint.id == endpoint_id)) or ""

    def remove_webhook(self, endpoint_id: int, tenant: str | None = None) -> None:
        self.webhook(endpoint_id, tenant)
        with self.session() as s:
            s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(removed_at=self.clock()))

    def deliveries(self, endpoint_id: int | None = None, *, tenant: str | None = None, failed: bool = False,
                   limit: int = 100) -> list[DeliveryInfo]:
        """Delivery attempts, newest first (one endpoint's, or a tenant's, or all)."""
        query = (select(WebhookDelivery).join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                 .order_by(WebhookDelivery.id.desc()).limit(limit))
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        if tenant is not None:
            query = query.where(WebhookEndpoint.tenant == tenant)
        if failed:
            query = query.where(WebhookDelivery.ok.is_(False))
        with self.session() as s:
            return [DeliveryInfo(r.id, r.endpoint_id, r.event_id, r.attempt, r.at, r.ok, r.status_code, r.error,
                                 r.duration_ms) for r in s.scalars(query)]

    # -- delivering ---------------------------------------------------------------------------------
    def due_webhooks(self) -> list[WebhookInfo]:
        """Endpoints not waiting out a backoff."""
        now = self.clock()
        with self.session() as s:
            return [_webhook(row) for row in s.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.removed_at.is_(None),
                                              WebhookEndpoint.next_attempt_at.is_(None)
                                              | (WebhookEndpoint.next_attempt_at <= now))
                .order_by(WebhookEndpoint.id))]

    def pending_events(self, endpoint: WebhookInfo, limit: int = 100) -> list[EventValue]:
        """The endpoint's events after its cursor, in order, its filters applied."""
        return self.events_after(endpoint.cursor, tenant=endpoint.tenant, batch=endpoint.batch_id,
                                 kinds=endpoint.events, limit=limit)

    def skip_to(self, endpoint_id: int, event_id: int) -> None:
        """Nothing the endpoint wants up to ``event_id``: move its cursor there (never back)."""
        with self.session() as s:
            s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                    WebhookEndpoint.cursor < event_id).values(cursor=event_id))

    def record_delivery(self, endpoint_id: int, event_id: int, *, ok: bool, status_code: int | None,
                        error: str | None, duration_ms: float, retry_in_s: float = 0.0) -> int:
        """Log an attempt; a success moves the cursor past the event, a failure sets the backoff.
        Returns the attempt's number for this event."""
        now = self.clock()
        with self.session() as s:
            attempt = (s.scalar(select(func.count()).select_from(WebhookDelivery).where(
                WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.event_id == event_id)) or 0) + 1
            s.add(WebhookDelivery(endpoint_id=endpoint_id, event_id=event_id, attempt=attempt, at=now, ok=ok,
                                  status_code=status_code, error=(error or None) and error[:2000],
                                  duration_ms=round(duration_ms, 2)))
            values: dict = ({"cursor": event_id, "failures": 0, "next_attempt_at": None} if ok else
                            {"failures": WebhookEndpoint.failures + 1,
                             "next_attempt_at": now + timedelta(seconds=retry_in_s)})
            where = [WebhookEndpoint.id == endpoint_id] + ([WebhookEndpoint.cursor < event_id] if ok else [])
            rowcount(s.execute(update(WebhookEndpoint).where(*where).values(**values)))
        return attempt
