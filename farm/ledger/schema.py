"""The ledger's database: engines, sessions, Alembic migrations, and the base every concern of
the ledger builds on (a clock and two ways to run a transaction).

SQLite (default) is migrated automatically on first use; PostgreSQL is migrated with
``farm db upgrade``.
"""

from __future__ import annotations

import fcntl
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from farm.errors import ConflictError, InfrastructureError, NotFound
from farm.ledger.revisions import MIGRATIONS_DIR, head_from_files


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets workers write while the CLI reads; busy_timeout makes writers wait, not fail.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=5, max_overflow=5)
    event.listen(engine, "checkin", _note_return)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


PING_AFTER_IDLE_S = 10.0  # a pooled connection unused this long is checked before it is handed out


def _note_return(_dbapi_conn, record) -> None:
    record.info["returned_at"] = time.monotonic()


def _ping_if_idle(dbapi_conn, record, _proxy) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections that sat idle: a server restart or an idle
    timeout (a proxy's, PgBouncer's) kills those, and the ping replaces them unseen. The ping is a
    round trip and, in autocommit, a server transaction of its own: on every checkout it doubled
    PostgreSQL's transactions per image (issue 15). A connection back in the pool milliseconds ago
    is not checked; if the server went away since, that one operation fails (the worker retries
    it) and SQLAlchemy drops the pool's other connections."""
    returned = record.info.get("returned_at")
    if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_S:
        return
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("SELECT 1")
        dbapi_conn.rollback()  # the caller starts from a connection outside any transaction
    except Exception as exc:  # noqa: BLE001 - any failure: hand out a fresh connection instead
        raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
    finally:
        try:
            cursor.close()
        except Exception:  # noqa: BLE001, S110 - the connection is being dropped anyway
            pass


def alembic_config(connection=None):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def stamped_revision(engine: Engine) -> str | None:
    """The revision recorded in the database (Alembic's table), or None before any migration."""
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except (OperationalError, ProgrammingError):
        return None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SqlCounts:
    """Statements and transactions this process sent to the ledger: what one image, or one idle
    worker, costs the central database (served as worker metrics; read by bench/cost.py)."""

    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        self._lock = threading.Lock()

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *_args) -> None:
        with self._lock:
            self.statements += 1

    def _commit(self, *_args) -> None:
        with self._lock:
            self.transactions += 1


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE changed (the typed Result hides the cursor's count)."""
    return int(result.rowcount)


class Database:
    """An engine, a clock and transactions; every concern of the ledger is a mixin over it."""

    def __init__(self, url: str, *, clock: Callable[[], datetime] = utcnow, auto_migrate: bool = True):
        self.url = url
        self.clock = clock
        self.engine = make_engine(url)
        self.sql_counts = SqlCounts()
        self.sql_counts.attach(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if auto_migrate:
            self.ensure_schema()

    def ensure_schema(self) -> None:
        """Apply migrations to a SQLite file on first use; require them on a server database."""
        try:
            quick = head_from_files()
            if quick is not None and stamped_revision(self.engine) == quick:
                return  # up to date: the common case, without Alembic
            head = head_revision()
            if current_revision(self.engine) == head:
                return
            if self.engine.dialect.name == "sqlite":
                db_path = self.url.split("///", 1)[-1]
                # concurrent first users (CLI and workers) must not migrate the same file twice
                lock = Path(db_path + ".migrate.lock") if db_path and db_path != ":memory:" else None
                if lock is None:
                    upgrade(self.engine)
                    return
                with _file_lock(lock):
                    if current_revision(self.engine) != head:
                        upgrade(self.engine)
                return
        except OperationalError as exc:
            raise InfrastructureError(f"cannot open the ledger at {self.safe_url}: {exc.orig}") from None
        raise InfrastructureError(
            f"the ledger at {self.safe_url} is not at schema {head}; run `farm db upgrade`"
        )

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except (IntegrityError, ConflictError, NotFound):
            session.rollback()
            raise
        except OperationalError as exc:
            session.rollback()
            raise InfrastructureError(f"ledger error: {exc.orig}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction: the hot paths (claim, complete) skip the ORM
        session's bookkeeping, a third of their cost on SQLite."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise InfrastructureError(f"ledger error: {exc.orig}") from None
