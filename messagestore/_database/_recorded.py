"""Changes recorded by jobs of other capabilities (the dispatcher) inside their transaction.

A job written elsewhere may create messages with the core's functions (``insert_message``);
it records the changes those return with ``record_changes`` and the repository announces them
when the transaction commits (``Repository.submit_transaction``), exactly like its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from .._changes import Change

__all__ = ["begin_recording", "record_changes", "source_of", "take_recorded"]

_CHANGES = "messagestore_recorded_changes"
_SOURCE = "messagestore_source"


def begin_recording(conn: Connection, source: str) -> None:
    conn.info[_CHANGES] = []
    conn.info[_SOURCE] = source


def record_changes(conn: Connection, changes: Sequence[Change]) -> None:
    """Have ``changes`` announced when the running transaction commits."""
    conn.info.setdefault(_CHANGES, []).extend(changes)


def source_of(conn: Connection) -> str:
    """The store's NOTIFY source for revisions taken in this transaction."""
    return str(conn.info.get(_SOURCE, "-"))


def take_recorded(conn: Connection) -> list[Change]:
    changes: list[Change] = conn.info.pop(_CHANGES, [])
    conn.info.pop(_SOURCE, None)
    return changes
