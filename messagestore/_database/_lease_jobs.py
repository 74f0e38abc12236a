"""Jobs on writer leases (see ``messagestore._recovery``): one transaction each.

Lease times come from the database's clock on PostgreSQL (stores on several hosts share one
server, so one clock decides) and from this machine's clock on SQLite (every process sharing a
SQLite file runs on this machine, so they share its clock; SQLite has no UTC clock function
with microseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, not_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import Exists

from .._model import utc_now
from ._schema import messages, writers

__all__ = [
    "WriterInfo",
    "database_now",
    "register_writer",
    "renew_writer",
    "retire_writer",
    "writer_has_open_rows",
]


@dataclass(frozen=True, slots=True)
class WriterInfo:
    """Who holds a lease: a random id, and the process and host, for people reading the table."""

    id: str
    pid: int
    host: str


def database_now(conn: Connection) -> datetime:
    """Now, by the clock that decides leases (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        value: datetime = conn.execute(select(func.now())).scalar_one()
        return value
    return utc_now()


def register_writer(conn: Connection, writer: WriterInfo, ttl: float) -> datetime:
    """Insert the writer's lease row, valid for ``ttl`` seconds; return its expiry."""
    now = database_now(conn)
    expires = now + timedelta(seconds=ttl)
    conn.execute(
        insert(writers).values(
            id=writer.id,
            pid=writer.pid,
            host=writer.host,
            started_at=now,
            heartbeat_at=now,
            expires_at=expires,
        )
    )
    return expires


def renew_writer(conn: Connection, writer: WriterInfo, ttl: float) -> bool:
    """Push the lease's expiry ``ttl`` seconds past now; True if the row still existed.

    A row that vanished (a sweep elsewhere judged the lease expired) is inserted again, and
    False tells the caller its lease had lapsed.
    """
    now = database_now(conn)
    result = conn.execute(
        update(writers)
        .where(writers.c.id == writer.id)
        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
    )
    if result.rowcount == 1:
        return True
    register_writer(conn, writer, ttl)
    return False


def retire_writer(conn: Connection, writer_id: str) -> None:
    """End the lease (the store closed): delete its row, or, while messages it wrote are still
    in progress, expire it now so that the next sweep checks them (and then deletes it)."""
    gone = conn.execute(
        delete(writers).where(writers.c.id == writer_id, not_(writer_has_open_rows()))
    )
    if gone.rowcount == 0:
        now = database_now(conn)
        conn.execute(
            update(writers)
            .where(writers.c.id == writer_id)
            .values(heartbeat_at=now, expires_at=now)
        )


def writer_has_open_rows() -> Exists:
    """True for a ``writers`` row whose id an in-progress message carries (partial index)."""
    return (
        select(messages.c.seq)
        .where(messages.c.writer_id == writers.c.id, messages.c.in_progress.is_(True))
        .exists()
    )
