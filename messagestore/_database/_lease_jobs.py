"""Jobs on writer leases (see ``messagestore._recovery``): one transaction each.

Lease times come from ``database_now``: the server's clock on PostgreSQL, this machine's on
SQLite (see ``messagestore._clock``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, not_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import Exists

from .._clock import database_now
from ._schema import messages, writers
from ._tx import Tx

__all__ = [
    "Renewal",
    "WriterInfo",
    "ended_writers",
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


def register_writer(tx: Tx, writer: WriterInfo, ttl: float) -> datetime:
    """Insert the writer's lease row, valid for ``ttl`` seconds; return its expiry."""
    return _register(tx.conn, writer, ttl)


def _register(conn: Connection, writer: WriterInfo, ttl: float) -> datetime:
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


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a heartbeat found: ``held`` is False if the row had vanished (a sweep elsewhere
    judged the lease expired) and was inserted again; ``ended`` lists the other writers whose
    lease has ended and whose row is still there (what a recovery sweep has to look at)."""

    held: bool
    ended: tuple[str, ...]


def renew_writer(tx: Tx, writer: WriterInfo, ttl: float) -> Renewal:
    """Push the lease's expiry ``ttl`` seconds past now, and look for ended writers."""
    conn = tx.conn
    now = database_now(conn)
    result = conn.execute(
        update(writers)
        .where(writers.c.id == writer.id)
        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
    )
    held = result.rowcount == 1
    if not held:
        _register(conn, writer, ttl)
    return Renewal(held, _ended(conn, writer.id, now))


def ended_writers(tx: Tx, own_writer_id: str) -> tuple[str, ...]:
    """The writers other than ``own_writer_id`` whose lease has ended (read)."""
    return _ended(tx.conn, own_writer_id, database_now(tx.conn))


def _ended(conn: Connection, own_writer_id: str, now: datetime) -> tuple[str, ...]:
    # One query on ``writers``, which holds a row per open store and per ended store not
    # swept yet (a sweep deletes it): small by construction, so no index on ``expires_at``,
    # which every heartbeat would have to update.
    query = (
        select(writers.c.id)
        .where(writers.c.expires_at < now, writers.c.id != own_writer_id)
        .order_by(writers.c.id)
    )
    return tuple(conn.execute(query).scalars())


def retire_writer(tx: Tx, writer_id: str) -> None:
    """End the lease (the store closed): delete its row, or, while messages it wrote are still
    in progress, expire it now so that the next sweep checks them (and then deletes it)."""
    conn = tx.conn
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
