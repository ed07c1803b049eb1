"""Read-only answers for the CLI's quickest commands (`farm status`, `farm batches list`) on the
default SQLite ledger, through the standard library's sqlite3: importing SQLAlchemy is most of a
command's start-up (issue 22). Only for a ledger at the newest schema revision, read as the ORM
reads it (``tests/ledger/test_quick.py`` checks both give the same values); anything else
returns None and the caller opens the full ``Ledger``."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from farm.jobs import states
from farm.ledger.revisions import head_from_files
from farm.ledger.values import BatchInfo, BatchSummary

BATCH_COLUMNS = "id, created_at, submitter, priority, model, recipe, base_seed, job_count, state, spec, tenant"


def sqlite_path(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite:///"):
        return None
    path = Path(database_url[len("sqlite:///"):])
    return path if path.is_file() else None


def _connect(database_url: str) -> sqlite3.Connection | None:
    path = sqlite_path(database_url)
    if path is None:
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        [(revision,)] = conn.execute("select version_num from alembic_version").fetchall()
    except (sqlite3.Error, ValueError):
        return None
    if revision != head_from_files():
        conn.close()
        return None  # the full Ledger migrates it first
    return conn


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _info(row) -> BatchInfo:
    (id_, created, submitter, priority, model, recipe, base_seed, job_count, state, spec, tenant) = row
    return BatchInfo(id=id_, created_at=_time(created), submitter=submitter or "", priority=priority, model=model,
                     recipe=recipe, base_seed=base_seed, job_count=job_count, state=state,
                     spec=json.loads(spec) if spec else {}, tenant=tenant or "local")


def _counts(conn, ids: list[str]) -> dict[str, dict[str, int]]:
    counts = {i: {st: 0 for st in states.STATES} for i in ids}
    marks = ",".join("?" * len(ids))
    for batch_id, state, n in conn.execute(
            f"select batch_id, state, count(*) from jobs where batch_id in ({marks}) group by batch_id, state", ids):
        counts[batch_id][state] = n
    return counts


def batch_summary(database_url: str, batch_id: str) -> BatchSummary | None | bool:
    """The batch's summary; False when there is no such batch; None when this path cannot answer."""
    conn = _connect(database_url)
    if conn is None:
        return None
    try:
        row = conn.execute(f"select {BATCH_COLUMNS} from batches where id = ?", (batch_id,)).fetchone()
        if row is None:
            return False
        counts = _counts(conn, [batch_id])[batch_id]
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return BatchSummary(_info(row), counts, sum(counts[t] for t in states.TERMINAL))


def recent_batches(database_url: str, limit: int) -> list[BatchSummary] | None:
    conn = _connect(database_url)
    if conn is None:
        return None
    try:
        rows = conn.execute(f"select {BATCH_COLUMNS} from batches order by created_at desc limit ?", (limit,)).fetchall()
        counts = _counts(conn, [r[0] for r in rows]) if rows else {}
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return [BatchSummary(_info(r), counts[r[0]], sum(counts[r[0]][t] for t in states.TERMINAL)) for r in rows]
