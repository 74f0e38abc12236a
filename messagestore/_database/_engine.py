"""Async engines set up for messagestore's access pattern (a store's jobs on PostgreSQL, the
command line, ``alembic``, ``Store.engine``). On SQLite a store runs its jobs on synchronous
engines of its own (``_database``), set up by the same ``configure_sqlite_connection``.

SQLite: WAL (readers never wait for the writer), ``synchronous=NORMAL`` (committed
transactions survive a crash of the process), ``foreign_keys=ON``, a busy timeout, and
``BEGIN IMMEDIATE`` so two writers never deadlock upgrading their locks. PostgreSQL (asyncpg)
needs nothing special.
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

__all__ = [
    "BUSY_TIMEOUT_MS",
    "configure_sqlite_connection",
    "create_engine",
    "is_in_memory",
    "normalize_url",
    "sqlite_file",
]

BUSY_TIMEOUT_MS = 30_000
_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SUPPORTED = frozenset(_DRIVERS.values())


def normalize_url(url: str) -> str:
    """Check ``url`` and give plain ``sqlite://`` / ``postgresql://`` their async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {url!r}") from None
    drivername = _DRIVERS.get(parsed.drivername, parsed.drivername)
    if drivername == "postgresql+psycopg2" or drivername.startswith("postgres+"):
        drivername = "postgresql+asyncpg"
    if drivername not in _SUPPORTED:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
        )
    return parsed.set(drivername=drivername).render_as_string(hide_password=False)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (see the module docstring for what is set up)."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, **kwargs)
    database = parsed.database or ""
    in_memory = is_in_memory(database)
    if in_memory:
        kwargs.setdefault("poolclass", StaticPool)
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **kwargs)
    _set_up_sqlite(engine, wal=not in_memory)
    return engine


def is_in_memory(database: str | None) -> bool:
    """True if a SQLite URL's database part names an in-memory database."""
    database = database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:")


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite ``url`` names, as an absolute path; None for PostgreSQL and for
    in-memory SQLite. ``ValueError`` for a URL ``normalize_url`` refuses."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or is_in_memory(parsed.database):
        return None
    return Path(parsed.database or "").expanduser().absolute()


def configure_sqlite_connection(
    dbapi_connection: Any, *, wal: bool, busy_timeout: float | None = None
) -> None:
    """Set up a fresh ``sqlite3`` (or aiosqlite) connection the way messagestore needs it.

    A lock another connection holds is waited for up to ``BUSY_TIMEOUT_MS``, or up to
    ``busy_timeout`` seconds if that is shorter (a store's job deadline: waiting longer would
    only keep its worker from the next job, its caller having been answered)."""
    busy_ms = BUSY_TIMEOUT_MS
    if busy_timeout is not None:
        busy_ms = max(1, min(busy_ms, math.ceil(busy_timeout * 1000)))
    # Hand transaction control to SQLAlchemy's "begin" hook instead of the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if wal:
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (a property of the file: only its first opener switches).

    The switch needs the database to itself and does not wait in the busy handler, so when
    several processes (or threads) open a new file at once it is retried for up to the busy
    timeout. This runs on a database thread, never on the event loop, so it may sleep.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            mode = cursor.fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _set_up_sqlite(engine: AsyncEngine, *, wal: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite_connection(dbapi_connection, wal=wal)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
