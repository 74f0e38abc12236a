"""The clock that rows judged by time (writer leases, dispatcher claims) are judged by.

On PostgreSQL it is the server's: stores on several hosts share one server, so one clock
decides. On SQLite it is this machine's: every process sharing a SQLite file runs on this
machine, so they share its clock (and SQLite has no UTC clock function with microseconds).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ._model import utc_now

__all__ = ["database_now"]


def database_now(conn: Connection) -> datetime:
    """Now, by the clock that decides leases and claims, read inside ``conn``'s transaction."""
    if conn.dialect.name == "postgresql":
        value: datetime = conn.execute(select(func.now())).scalar_one()
        return value
    return utc_now()
