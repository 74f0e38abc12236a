"""Jobs on messages: each function is the whole body of one transaction (see ``_database``).

Writes take their revisions first (``_revisions``), then change rows, keep
``sessions.message_count`` right in the same transaction, and return what changed for the
feed. Reads return model objects. Every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DataError, IntegrityError

from pubsub import EventType

from .._changes import Change, Kind
from .._codec import decode_parts, encode_parts
from .._errors import CorruptRow, InvalidMessage, MessageNotFound, SessionNotFound
from .._model import Message, Role, ToolResult, utc_now
from ._revisions import Counter, add_tombstones, allocate, lock_counter
from ._rows import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    deleted_message,
    in_progress,
    message_from_row,
    message_values,
    session_from_row,
)
from ._schema import messages, sessions

__all__ = [
    "WriteResult",
    "delete_messages",
    "get_message",
    "insert_message",
    "list_messages",
    "rewrite_messages",
    "settle_answered",
    "tool_results",
    "write_messages",
]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch write did.

    ``revisions`` maps each written id to the revision it was stored at; ``missing`` names ids
    whose row no longer exists (deleted elsewhere); ``failed`` maps ids the database refused
    to the error (the rest of the batch was written without them); ``bytes`` counts the parts
    JSON written; ``lifelong`` gives, for each id the write was asked to verify, what its row
    keeps for life (``session_id``, ``role``, ``created_at``).
    """

    revisions: dict[str, int]
    bytes: int
    missing: frozenset[str] = frozenset()
    failed: dict[str, Exception] = field(default_factory=dict)
    lifelong: dict[str, tuple[str, Role, datetime]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.revisions)


# -- creating --------------------------------------------------------------------------------


def insert_message(
    conn: Connection, message: Message, *, writer_id: str | None, source: str
) -> list[Change]:
    """Insert ``message`` (id and timestamps set), count it in its session.

    Sets ``message.revision``. Returns the changes: the message ``CREATED``, its session
    ``UPDATED`` (its count changed). ``SessionNotFound`` if the session does not exist.
    """
    first = allocate(conn, 2, source)
    message.revision = first
    now = utc_now()
    row = conn.execute(
        update(sessions)
        .where(sessions.c.id == message.session_id)
        .values(message_count=sessions.c.message_count + 1, updated_at=now, revision=first + 1)
        .returning(*SESSION_COLUMNS)
    ).first()
    if row is None:
        raise SessionNotFound(message.session_id)
    conn.execute(insert(messages).values(message_values(message, writer_id)))
    if message.tool_results:
        settle_answered(conn, {message.session_id})
    return [
        Change(Kind.MESSAGE, EventType.CREATED, message),
        Change(Kind.SESSION, EventType.UPDATED, session_from_row(row), terminal=False),
    ]


# -- the group commit ------------------------------------------------------------------------


class _BatchUpdate:
    """The batch UPDATE of ``write_messages``, compiled once for one dialect."""

    _SET = (
        "parts",
        "model",
        "provider",
        "is_summary_message",
        "updated_at",
        "writer_id",
        "revision",
        "in_progress",
    )

    def __init__(self, dialect: Dialect) -> None:
        statement = update(messages).where(messages.c.id == bindparam("b_id"))
        compiled = statement.compile(dialect=dialect, column_keys=list(self._SET))
        order = compiled.positiontup
        if order is None:  # a named paramstyle: neither sqlite3 nor asyncpg uses one
            raise NotImplementedError(f"driver paramstyle {dialect.paramstyle!r}")
        self.sql = compiled.string
        self.order = tuple(order)
        self.parts_at = self.order.index("parts")
        self._time: Any = messages.c.updated_at.type.bind_processor(dialect) or _unchanged
        self._last_time: tuple[datetime | None, Any] = (None, None)

    def row(self, message: Message, writer_id: str | None, revision: int) -> tuple[Any, ...]:
        """The driver-level parameters for one message, in statement order."""
        values = {
            "b_id": message.id,
            "writer_id": writer_id,
            "parts": encode_parts(message.parts),
            "model": message.model,
            "provider": message.provider,
            "is_summary_message": message.is_summary_message,
            "updated_at": self._driver_time(message.updated_at),
            "revision": revision,
            "in_progress": in_progress(message),
        }
        return tuple([values[name] for name in self.order])

    def _driver_time(self, value: datetime) -> Any:
        # A batch shares one ``updated_at``: convert it once, not once per row.
        last, converted = self._last_time
        if value is not last:
            converted = self._time(value)
            self._last_time = (value, converted)
        return converted


def _unchanged(value: Any) -> Any:
    return value


_STATEMENTS: dict[str, _BatchUpdate] = {}


def _batch_update(dialect: Dialect) -> _BatchUpdate:
    statement = _STATEMENTS.get(dialect.name)
    if statement is None:
        statement = _STATEMENTS[dialect.name] = _BatchUpdate(dialect)
    return statement


# Errors that belong to one row's values, not to the database: the batch is retried without
# the row. Anything else (connection lost, disk I/O, locked) fails the whole batch.
_ROW_ERRORS = (IntegrityError, DataError, TypeError, ValueError, OverflowError)


def write_messages(
    conn: Connection,
    batch: Sequence[Message],
    *,
    writer_id: str | None,
    source: str,
    verify: frozenset[str] = frozenset(),
) -> WriteResult:
    """Write the mutable fields of every message in ``batch`` in ONE transaction.

    This is the group commit, run once per tick for every streaming message, so it skips
    SQLAlchemy's per-row work: the UPDATE is compiled once per dialect and the rows go to the
    driver's ``executemany`` as plain tuples. Each row takes the next revision. A row the
    database refuses (or whose values cannot be encoded) is isolated: the batch is written
    row by row inside savepoints and the refused ids are reported in ``failed``. Rows that no
    longer exist are reported in ``missing``.

    Only the mutable fields are written. For the ids in ``verify`` (states the writer cannot
    compare with a known row: the message was created elsewhere) the row's lifelong fields
    are read first: a state that changes one is refused with ``InvalidMessage``, so it can
    never be announced with a value the row does not hold.
    """
    if not batch:
        return WriteResult({}, 0)
    statement = _batch_update(conn.dialect)
    first = allocate(conn, len(batch), source)
    rows: list[tuple[Any, ...]] = []
    ids: list[str] = []
    revision: dict[str, int] = {}
    failed: dict[str, Exception] = {}
    lifelong = _lifelong(conn, verify) if verify else {}
    for offset, message in enumerate(batch):
        stored = lifelong.get(message.id)
        if stored is not None:
            changed = _changed_lifelong(message, stored)
            if changed is not None:
                failed[message.id] = changed
                continue
        try:
            rows.append(statement.row(message, writer_id, first + offset))
        except _ROW_ERRORS as exc:
            failed[message.id] = exc
            continue
        ids.append(message.id)
        revision[message.id] = first + offset
    written = _execute_rows(conn, statement, rows, ids, failed)
    missing = frozenset(i for i in ids if i not in written and i not in failed)
    size = sum(
        len(row[statement.parts_at]) for i, row in zip(ids, rows, strict=True) if i in written
    )
    answered = {m.session_id for m in batch if m.id in written and m.tool_results}
    if answered:
        settle_answered(conn, answered)
    return WriteResult(
        {i: revision[i] for i in ids if i in written}, size, missing, failed, lifelong
    )


def _lifelong(conn: Connection, ids: Iterable[str]) -> dict[str, tuple[str, Role, datetime]]:
    """What the rows of ``ids`` keep for life: (session_id, role, created_at) by id."""
    wanted = sorted(set(ids))
    found: dict[str, tuple[str, Role, datetime]] = {}
    for start in range(0, len(wanted), 500):
        query = select(
            messages.c.id, messages.c.session_id, messages.c.role, messages.c.created_at
        ).where(messages.c.id.in_(wanted[start : start + 500]))
        for message_id, session_id, role, created_at in conn.execute(query):
            if role in Role._value2member_map_:  # a corrupt role: nothing to compare with
                found[message_id] = (session_id, Role(role), created_at)
    return found


def _changed_lifelong(
    message: Message, stored: tuple[str, Role, datetime]
) -> InvalidMessage | None:
    for name, old in zip(("session_id", "role", "created_at"), stored, strict=True):
        new = getattr(message, name)
        if old != new:
            return InvalidMessage(
                f"message {message.id!r}: {name} cannot change once stored "
                f"({old!r} -> {new!r}); create a new message instead"
            )
    return None


def rewrite_messages(conn: Connection, batch: Sequence[Message]) -> None:
    """Store ``batch`` at the revisions already set on each message (the recovery sweep)."""
    statement = _batch_update(conn.dialect)
    conn.exec_driver_sql(statement.sql, [statement.row(m, None, m.revision) for m in batch])


def _execute_rows(
    conn: Connection,
    statement: _BatchUpdate,
    rows: list[tuple[Any, ...]],
    ids: list[str],
    failed: dict[str, Exception],
) -> set[str]:
    """Run the UPDATE for ``rows``; return the ids whose row was updated."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        # asyncpg's executemany reports no row count: look the ids up first (the counter
        # lock keeps every other messagestore writer out until the commit).
        existing = _existing(conn, ids)
        pairs = [(i, r) for i, r in zip(ids, rows, strict=True) if i in existing]
        ids = [i for i, _ in pairs]
        rows = [r for _, r in pairs]
        if not rows:
            return set()
    try:
        with conn.begin_nested():
            count = conn.exec_driver_sql(statement.sql, rows).rowcount
    except _ROW_ERRORS:
        return _one_by_one(conn, statement, rows, ids, failed)
    if conn.dialect.name == "postgresql" or count == len(rows):
        return set(ids)
    return _existing(conn, ids)


def _one_by_one(
    conn: Connection,
    statement: _BatchUpdate,
    rows: list[tuple[Any, ...]],
    ids: list[str],
    failed: dict[str, Exception],
) -> set[str]:
    written: set[str] = set()
    for message_id, row in zip(ids, rows, strict=True):
        try:
            with conn.begin_nested():
                result = conn.exec_driver_sql(statement.sql, [row])
        except _ROW_ERRORS as exc:
            failed[message_id] = exc
            continue
        if conn.dialect.name == "postgresql" or result.rowcount:
            written.add(message_id)
    return written


def _existing(conn: Connection, ids: Iterable[str]) -> set[str]:
    wanted = sorted(set(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(conn.execute(select(messages.c.id).where(messages.c.id.in_(chunk))).scalars())
    return found


def settle_answered(conn: Connection, session_ids: Iterable[str]) -> None:
    """Clear ``in_progress`` on finished messages of these sessions whose every tool call a
    stored ``ToolResult`` now answers (their writer dying can no longer leave them half done).
    """
    for session_id in session_ids:
        rows = conn.execute(
            select(messages.c.seq, messages.c.id, messages.c.role, messages.c.parts).where(
                messages.c.session_id == session_id, messages.c.in_progress.is_(True)
            )
        ).all()
        if not rows:
            continue
        answered = tool_results(conn, {session_id})[session_id]
        done: list[int] = []
        for seq, message_id, role, parts in rows:
            try:
                decoded = decode_parts(message_id, parts)
            except CorruptRow:
                continue
            message = Message(message_id, session_id, Role(role), decoded)
            if message.role is Role.ASSISTANT and not message.is_finished:
                continue
            if all(call.id in answered for call in message.tool_calls):
                done.append(seq)
        if done:
            conn.execute(update(messages).where(messages.c.seq.in_(done)).values(in_progress=False))


def tool_results(conn: Connection, session_ids: set[str]) -> dict[str, set[str]]:
    """For each session, the tool-call ids that a stored ``ToolResult`` answers."""
    answered: dict[str, set[str]] = {sid: set() for sid in session_ids}
    if not session_ids:
        return answered
    query = select(messages.c.id, messages.c.session_id, messages.c.parts).where(
        messages.c.session_id.in_(sorted(session_ids)), has_tag("tool_result")
    )
    for message_id, session_id, parts in conn.execute(query).all():
        try:
            decoded = decode_parts(message_id, parts)
        except CorruptRow:
            continue  # its results are unknown; the calls get an error result instead
        answered[session_id].update(p.tool_call_id for p in decoded if isinstance(p, ToolResult))
    return answered


def has_tag(tag: str) -> Any:
    """True for parts JSON holding a part of type ``tag``.

    ``encode_parts`` escapes every quote inside a string value, so the quoted tag can only
    appear as a part's type (no data key is spelled like a tag); a hand-written row may give a
    false match, which only costs a decode.
    """
    return messages.c.parts.contains(f'"{tag}"', autoescape=True)


# -- deleting --------------------------------------------------------------------------------


def delete_messages(
    conn: Connection, counter: Counter, where: Any, *, recount: bool = True
) -> list[Change]:
    """Delete matching messages, leave tombstones, and (``recount``) uncount them in their
    sessions; return the changes.

    The caller locked the counter first (``lock_counter``) and closes it after. A corrupt row
    is still deleted; it is reported with its parts left empty.
    """
    result = conn.execute(delete(messages).where(where).returning(*MESSAGE_COLUMNS, messages.c.seq))
    rows = sorted(result.all(), key=lambda row: row[-1])
    if not rows:
        return []
    now = utc_now()
    changes: list[Change] = []
    stones: list[dict[str, Any]] = []
    per_session: dict[str, int] = {}
    for row in rows:
        message = deleted_message(row[:-1])
        message.revision = counter.take()
        changes.append(Change(Kind.MESSAGE, EventType.DELETED, message))
        stones.append(_tombstone(Kind.MESSAGE, message.id, message, now))
        per_session[message.session_id] = per_session.get(message.session_id, 0) + 1
    add_tombstones(conn, stones)
    for session_id, count in per_session.items() if recount else ():
        counted = conn.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(
                message_count=sessions.c.message_count - count,
                updated_at=now,
                revision=counter.take(),
            )
            .returning(*SESSION_COLUMNS)
        ).first()
        if counted is not None:
            changes.append(Change(Kind.SESSION, EventType.UPDATED, session_from_row(counted)))
    return changes


def delete_message(conn: Connection, message_id: str, *, source: str) -> list[Change]:
    """Delete one message; ``MessageNotFound`` if it does not exist."""
    counter = lock_counter(conn, source)
    changes = delete_messages(conn, counter, messages.c.id == message_id)
    if not changes:
        raise MessageNotFound(message_id)
    counter.close()
    return changes


def delete_session_messages(conn: Connection, session_id: str, *, source: str) -> list[Change]:
    """Delete every message of the session."""
    counter = lock_counter(conn, source)
    changes = delete_messages(conn, counter, messages.c.session_id == session_id)
    counter.close()
    return changes


def _tombstone(kind: Kind, row_id: str, message: Message, now: datetime) -> dict[str, Any]:
    return {
        "revision": message.revision,
        "kind": kind.value,
        "id": row_id,
        "session_id": message.session_id,
        "role": message.role.value,
        "created_at": message.created_at,
        "deleted_at": now,
    }


# -- reading ---------------------------------------------------------------------------------


def get_message(conn: Connection, message_id: str) -> Message:
    row = conn.execute(select(*MESSAGE_COLUMNS).where(messages.c.id == message_id)).first()
    if row is None:
        raise MessageNotFound(message_id)
    return message_from_row(row)


def list_messages(conn: Connection, *where: Any) -> list[Message]:
    """Matching messages in creation order."""
    query = select(*MESSAGE_COLUMNS).where(*where).order_by(messages.c.seq)
    return [message_from_row(row) for row in conn.execute(query).all()]
