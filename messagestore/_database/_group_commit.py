"""The group commit: one transaction per tick for every message the tick writes.

Each message is written whole (the row rewritten, its stream closed: a change that is not a
pure append, a terminal change, this store's first write of it, a stream grown past its base or
``FOLD_TICKS``) or appended (only the text appended since, in the tick's one
``message_appends`` row; see ``_appends``). Each message takes the next revision. The UPDATE is
compiled once per dialect and sent with ``executemany``. A row the database refuses is isolated
with savepoints and reported in ``failed``; vanished rows in ``missing``. The story:
docs/ARCHITECTURE.md, "The life of one update()".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DataError, IntegrityError

from .._codec import encode_parts
from .._model import Message, Reasoning, Role, Text, ToolCall
from .._validation import Lifelong, changed_lifelong
from . import _appends as appends_module
from ._appends import FOLD_MIN_CHARS, FOLD_TICKS, Append, diff, encode
from ._message_jobs import settle_answered
from ._rows import in_progress
from ._schema import message_appends, messages
from ._tx import Tx
from ._value_lists import ListStatement, values

__all__ = ["ItemResult", "WriteItem", "WriteResult", "rewrite_messages", "write_messages"]


@dataclass(frozen=True, slots=True)
class WriteItem:
    """One message of a batch: its state, and what the writer knows of what is stored.

    ``written`` is the state stored by the last committed write (None: write it whole);
    ``seq`` the row's key if known; ``streaming`` whether appends follow the stored base;
    ``appended`` / ``ticks`` the characters and appends since that base; ``base`` the
    streamed characters of the base.
    """

    state: Message
    written: Message | None = None
    seq: int | None = None
    streaming: bool = False
    appended: int = 0
    ticks: int = 0
    base: int = 0


@dataclass(frozen=True, slots=True)
class ItemResult:
    """How one message was written: ``appended`` (or whole), its ``seq``, and ``chars``:
    the characters appended, or the streamed characters of the new base."""

    revision: int
    appended: bool
    seq: int | None
    chars: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch write did.

    ``items`` maps each written id to how it was written; ``missing`` names ids whose row no
    longer exists (deleted elsewhere); ``failed`` maps ids the database refused to the error
    (the rest of the batch was written without them); ``bytes`` counts the parts JSON and
    append payload written; ``lifelong`` gives, for each id the write was asked to verify,
    what its row keeps for life (``session_id``, ``role``, ``created_at``).
    """

    items: dict[str, ItemResult]
    bytes: int
    missing: frozenset[str] = frozenset()
    failed: dict[str, Exception] = field(default_factory=dict)
    lifelong: dict[str, Lifelong] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.items)

    @property
    def revisions(self) -> dict[str, int]:
        return {i: r.revision for i, r in self.items.items()}


class _BatchUpdate:
    """The batch UPDATE of whole rows, compiled once for one dialect."""

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


def streamed_chars(message: Message) -> int:
    """Characters of the fields that stream (text, thinking, tool-call input)."""
    size = 0
    for part in message.parts:
        if isinstance(part, Text):
            size += len(part.text)
        elif isinstance(part, Reasoning):
            size += len(part.thinking)
        elif isinstance(part, ToolCall):
            size += len(part.input)
    return size


def _appends_of(item: WriteItem) -> list[Append] | None:
    """The appends to store for ``item``, or None to write it whole."""
    if item.written is None or item.seq is None or item.ticks >= FOLD_TICKS:
        return None
    grown = diff(item.written, item.state)
    if grown is None:
        return None
    size = sum(len(text) for _, _, text in grown)
    if item.appended + size > max(FOLD_MIN_CHARS, item.base):
        return None
    return grown


def write_messages(
    tx: Tx, items: Sequence[WriteItem], *, verify: frozenset[str] = frozenset()
) -> WriteResult:
    """Write every item in ONE transaction (see the module docstring), stamped with the
    transaction's writer id.

    For the ids in ``verify`` (states the writer cannot compare with a known row: the message
    was created elsewhere) the row's lifelong fields are read first: a state that changes one
    is refused with ``InvalidMessage``, so it can never be announced with a value the row does
    not keep.
    """
    if not items:
        return WriteResult({}, 0)
    first = tx.take_revisions(len(items))
    conn = tx.conn
    lifelong = _lifelong(conn, verify) if verify else {}
    refused: dict[str, Exception] = {}
    for item in items:
        stored = lifelong.get(item.state.id)
        if stored is not None:
            changed = changed_lifelong(item.state, stored)
            if changed is not None:
                refused[item.state.id] = changed
    if refused:
        items = [item for item in items if item.state.id not in refused]
    whole: list[tuple[WriteItem, int]] = []
    appended: list[tuple[WriteItem, int, list[Append]]] = []
    for offset, item in enumerate(items):
        grown = _appends_of(item)
        if grown is None:
            whole.append((item, first + offset))
        else:
            appended.append((item, first + offset, grown))
    results: dict[str, ItemResult] = {}
    failed: dict[str, Exception] = dict(refused)
    missing: set[str] = set()
    size = _write_whole(conn, whole, tx.writer_id, results, failed, missing)
    size += _write_appends(conn, appended, first, first + len(items) - 1, results, missing)
    # A message written whole has no stream any more. Close it when the writer knew of one,
    # and also whenever it could not know (``written`` unknown: another write of the message
    # was in flight when this one was taken, and may have opened a stream whose appends would
    # otherwise be applied a second time on top of the new base).
    closed = [
        item.state.id
        for item, _ in whole
        if item.state.id in results and (item.streaming or item.written is None)
    ]
    if closed and appends_module.close_streams(conn, closed):
        appends_module.collect(conn)
    answered = {
        item.state.session_id
        for item, _ in whole
        if item.state.id in results and item.state.tool_results
    }
    if answered:
        settle_answered(conn, answered)
    return WriteResult(results, size, frozenset(missing), failed, lifelong)


def _lifelong(conn: Connection, ids: Iterable[str]) -> dict[str, Lifelong]:
    """What the rows of ``ids`` keep for life: (session_id, role, created_at) by id."""
    found: dict[str, Lifelong] = {}
    rows = conn.execute(_LIFELONG(conn), {"ids": values(conn, sorted(set(ids)))})
    for message_id, session_id, role, created_at in rows:
        if role in Role._value2member_map_:  # a corrupt role: nothing to compare with
            found[message_id] = (session_id, Role(role), created_at)
    return found


_LIFELONG = ListStatement(
    lambda one_of: select(
        messages.c.id, messages.c.session_id, messages.c.role, messages.c.created_at
    ).where(one_of(messages.c.id, "ids"))
)


def _write_whole(
    conn: Connection,
    whole: list[tuple[WriteItem, int]],
    writer_id: str | None,
    results: dict[str, ItemResult],
    failed: dict[str, Exception],
    missing: set[str],
) -> int:
    if not whole:
        return 0
    statement = _batch_update(conn.dialect)
    rows: list[tuple[Any, ...]] = []
    ids: list[str] = []
    for item, revision in whole:
        try:
            rows.append(statement.row(item.state, writer_id, revision))
        except _ROW_ERRORS as exc:
            failed[item.state.id] = exc
            continue
        ids.append(item.state.id)
    written = _execute_rows(conn, statement, rows, ids, failed)
    missing.update(i for i in ids if i not in written and i not in failed)
    unknown = [item.state.id for item, _ in whole if item.seq is None and item.state.id in written]
    seqs = _seqs(conn, unknown)
    for item, revision in whole:
        message_id = item.state.id
        if message_id in written:
            seq = item.seq if item.seq is not None else seqs.get(message_id)
            results[message_id] = ItemResult(revision, False, seq, streamed_chars(item.state))
    return sum(
        len(row[statement.parts_at]) for i, row in zip(ids, rows, strict=True) if i in written
    )


def _write_appends(
    conn: Connection,
    appended: list[tuple[WriteItem, int, list[Append]]],
    first: int,
    last: int,
    results: dict[str, ItemResult],
    missing: set[str],
) -> int:
    if not appended:
        return 0
    existing = _existing_seqs(conn, [item.seq for item, _, _ in appended if item.seq is not None])
    entries: list[tuple[int, int, Sequence[Append]]] = []
    opened: list[tuple[str, int]] = []
    for item, revision, grown in appended:
        assert item.seq is not None
        if item.seq not in existing:
            missing.add(item.state.id)
            continue
        entries.append((item.seq, revision - first, grown))
        if not item.streaming:
            opened.append((item.state.id, revision))
        results[item.state.id] = ItemResult(
            revision, True, item.seq, sum(len(text) for _, _, text in grown)
        )
    if not entries:
        return 0
    payload = encode(entries)
    conn.execute(
        _APPEND,
        {
            "last_revision": last,
            "first_revision": first,
            # A batch shares one write time (see ``_writes._buffer``).
            "updated_at": appended[0][0].state.updated_at,
            "payload": payload,
        },
    )
    if opened:
        appends_module.close_streams(conn, [i for i, _ in opened])  # never two for one message
        appends_module.open_streams(conn, opened)
    return len(payload)


def rewrite_messages(conn: Connection, batch: Sequence[Message]) -> None:
    """Store ``batch`` whole at the revisions already set on each message (recovery)."""
    statement = _batch_update(conn.dialect)
    conn.exec_driver_sql(statement.sql, [statement.row(m, None, m.revision) for m in batch])
    appends_module.close_streams(conn, [m.id for m in batch])


_SEQS = ListStatement(
    lambda one_of: select(messages.c.id, messages.c.seq).where(one_of(messages.c.id, "ids"))
)
_EXISTING_SEQS = ListStatement(
    lambda one_of: select(messages.c.seq).where(one_of(messages.c.seq, "seqs"))
)
_EXISTING_IDS = ListStatement(
    lambda one_of: select(messages.c.id).where(one_of(messages.c.id, "ids"))
)
_APPEND = insert(message_appends)


def _seqs(conn: Connection, ids: Sequence[str]) -> dict[str, int]:
    if not ids:
        return {}
    rows = conn.execute(_SEQS(conn), {"ids": values(conn, ids)})
    return {row[0]: row[1] for row in rows}


def _existing_seqs(conn: Connection, seqs: Sequence[int]) -> set[int]:
    if not seqs:
        return set()
    return set(conn.execute(_EXISTING_SEQS(conn), {"seqs": values(conn, seqs)}).scalars())


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
    if not wanted:
        return set()
    return set(conn.execute(_EXISTING_IDS(conn), {"ids": values(conn, wanted)}).scalars())
