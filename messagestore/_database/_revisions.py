"""The revision counter, tombstones, and reading what changed after a revision.

Every job that changes messages or sessions takes its revisions from the one ``feed_state`` row
before it locks anything else: on PostgreSQL that row's lock is held to the commit, so such
transactions commit in revision order and never deadlock on each other's rows, and the same
update sends ``NOTIFY messagestore_feed '<source> <revision>'``. On SQLite ``BEGIN IMMEDIATE``
already serializes writers. Jobs take revisions through their ``Tx``. The story:
docs/ARCHITECTURE.md, "The database: jobs and transactions".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.engine import Connection

from pubsub import EventType

from .._changes import Change, Kind
from .._errors import CorruptRow, RevisionCompacted
from .._model import Message, Role, Session
from . import _appends as appends
from ._rows import MESSAGE_COLUMNS, SESSION_COLUMNS, message_from_row, session_from_row
from ._schema import feed_state, message_appends, messages, sessions, tombstones
from ._value_lists import ListStatement, values

if TYPE_CHECKING:
    from ._tx import Tx

__all__ = [
    "NOTIFY_CHANNEL",
    "ChangePage",
    "Counter",
    "add_tombstones",
    "bump",
    "lock_counter_row",
    "prune_tombstones",
    "read_changes",
    "read_counter",
]

NOTIFY_CHANNEL = "messagestore_feed"


# Built once: SQLAlchemy memoizes a statement's cache key, so executing the same object costs
# far less than building an equal one per call (this runs in every write transaction).
_BUMP_POSTGRES = text(
    "WITH bumped AS (UPDATE feed_state SET revision = revision + :n WHERE id = 1 "
    "RETURNING revision) "
    "SELECT revision, pg_notify(:channel, :source || ' ' || revision) FROM bumped"
)
_BUMP = (
    update(feed_state)
    .where(feed_state.c.id == 1)
    .values(revision=feed_state.c.revision + bindparam("n"))
    .returning(feed_state.c.revision)
)


def bump(conn: Connection, count: int, source: str) -> int:
    """Advance the counter by ``count`` (notifying ``source`` on PostgreSQL); return the new
    value. Jobs take revisions through ``Tx.take_revisions``, which remembers them."""
    if conn.dialect.name == "postgresql":
        row = conn.execute(
            _BUMP_POSTGRES, {"n": count, "channel": NOTIFY_CHANNEL, "source": source}
        ).one()
        return int(row[0])
    return int(conn.execute(_BUMP, {"n": count}).scalar_one())


class Counter:
    """Revisions for a job that learns how many it needs only as it goes (deletes, sweeps).

    ``Tx.lock_counter`` locks the counter row first; ``take()`` hands out revisions;
    ``close()`` takes them in the transaction (``Tx.take_revisions``: stores the new value,
    notifies) if any were handed out.
    """

    def __init__(self, tx: Tx, current: int) -> None:
        self._tx = tx
        self._current = current
        self._taken = 0

    def take(self) -> int:
        self._taken += 1
        return self._current + self._taken

    def close(self) -> None:
        if self._taken:
            first = self._tx.take_revisions(self._taken)
            if first != self._current + 1:  # revisions taken past this counter meanwhile
                raise RuntimeError(
                    f"revisions {self._current + 1}.. handed out, but the counter gave {first}.."
                )


_LOCK = select(feed_state.c.revision).where(feed_state.c.id == 1)
_LOCK_POSTGRES = _LOCK.with_for_update()


def lock_counter_row(conn: Connection) -> int:
    """Lock the counter row (on PostgreSQL, to the commit) and return its value."""
    query = _LOCK_POSTGRES if conn.dialect.name == "postgresql" else _LOCK
    return int(conn.execute(query).scalar_one())


def read_counter(tx: Tx) -> tuple[int, int]:
    """(newest revision, compacted revision)."""
    row = tx.conn.execute(
        select(feed_state.c.revision, feed_state.c.compacted_revision).where(feed_state.c.id == 1)
    ).one()
    return int(row[0]), int(row[1])


def add_tombstones(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Insert tombstones: dicts with revision, kind, id, session_id, role, created_at,
    deleted_at."""
    batch = list(rows)
    if batch:
        conn.execute(insert(tombstones), batch)


def prune_tombstones(tx: Tx, before: datetime) -> int:
    """Delete tombstones older than ``before`` and raise ``compacted_revision`` to the newest
    one deleted; return how many were deleted."""
    tx.lock_counter()  # the counter row first, as every write job does
    conn = tx.conn
    pruned = list(
        conn.execute(
            delete(tombstones)
            .where(tombstones.c.deleted_at < before)
            .returning(tombstones.c.revision)
        ).scalars()
    )
    if not pruned:
        return 0
    newest = max(pruned)
    conn.execute(
        update(feed_state)
        .where(feed_state.c.id == 1, feed_state.c.compacted_revision < newest)
        .values(compacted_revision=newest)
    )
    return len(pruned)


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Changes with revisions in (after, end], oldest first; ``more`` if the page was cut.

    ``newest`` is the counter when the page was read: every change up to it had committed.
    Rows that fail to decode are reported in ``corrupt`` (and skipped).
    """

    changes: tuple[Change, ...]
    end: int
    newest: int
    more: bool
    corrupt: tuple[str, ...] = ()


def read_changes(
    tx: Tx,
    after: int,
    *,
    upto: int | None,
    limit: int,
    session_id: str | None = None,
    kinds: frozenset[Kind] = frozenset(Kind),
) -> ChangePage:
    """The newest state of everything in scope that changed after ``after``, up to ``upto``
    (default: the counter now), at most ``limit`` changes, in revision order.

    A row created after ``after`` is reported ``CREATED`` (with its newest state), one that
    changed ``UPDATED``; a tombstone ``DELETED``. Raises ``RevisionCompacted`` if tombstones
    after ``after`` may already be pruned.
    """
    newest, compacted = read_counter(tx)
    if after < compacted:
        raise RevisionCompacted(after, compacted)
    end = newest if upto is None else min(upto, newest)
    found: list[tuple[int, Change | str]] = []
    bounded = False
    if Kind.MESSAGE in kinds:
        changed, complete_to = _message_changes(tx, after, end, limit, session_id)
        found += changed
        if complete_to < end:
            end, bounded = complete_to, True
    if Kind.SESSION in kinds:
        found += _session_changes(tx.conn, after, end, limit, session_id)
    found += _tombstone_changes(tx.conn, after, end, limit, session_id, kinds)
    found = sorted((item for item in found if item[0] <= end), key=lambda item: item[0])
    more = bounded or len(found) > limit
    if more:
        found = found[:limit]
        end = found[-1][0]
    changes = tuple(c for _, c in found if isinstance(c, Change))
    corrupt = tuple(c for _, c in found if isinstance(c, str))
    return ChangePage(changes, end, newest, more, corrupt)


def _message_changes(
    tx: Tx, after: int, end: int, limit: int, session_id: str | None
) -> tuple[list[tuple[int, Change | str]], int]:
    """Messages whose newest state has a revision in (after, end], and the revision up to
    which that list is complete (``end``, or less when ``limit`` cut the row read short).

    A streaming message's newest state is its row plus its appends (``_appends``): it changed
    if its row did or if text was appended to it in the range.
    """
    query = (
        select(*MESSAGE_COLUMNS, messages.c.created_revision, messages.c.seq)
        .where(messages.c.revision > after, messages.c.revision <= end)
        .order_by(messages.c.revision)
        .limit(limit + 1)
    )
    if session_id is not None:
        query = query.where(messages.c.session_id == session_id)
    conn = tx.conn
    rows: list[Any] = list(conn.execute(query).all())
    if len(rows) > limit:
        end = rows[-1][-3] - 1  # complete below the first row left out
        rows = rows[:limit]
    appended = _appended_seqs(conn, after, end)
    fetched = {row[-1] for row in rows}
    missing = sorted(appended - fetched)
    if missing:
        params = {"seqs": values(conn, missing), "session_id": session_id}
        extra = _IN_SESSION_BY_SEQ if session_id is not None else _BY_SEQ
        rows.extend(conn.execute(extra(conn), params).all())
    found: list[tuple[int, Change | str]] = []
    by_seq: dict[int, tuple[Message, bool]] = {}
    for row in rows:
        try:
            message = message_from_row(row[:-2])
        except CorruptRow:
            if row[-3] > after:
                found.append((row[-3], row[0]))
            continue
        by_seq[row[-1]] = (message, row[-2] > after)
    appends.load(conn, {seq: m for seq, (m, _) in by_seq.items()}, tx.stream_cache)
    for message, created in by_seq.values():
        if after < message.revision <= end:
            kind = EventType.CREATED if created else EventType.UPDATED
            found.append((message.revision, Change(Kind.MESSAGE, kind, message)))
    return found, end


_BY_SEQ = ListStatement(
    lambda one_of: select(*MESSAGE_COLUMNS, messages.c.created_revision, messages.c.seq).where(
        one_of(messages.c.seq, "seqs")
    )
)
_IN_SESSION_BY_SEQ = ListStatement(
    lambda one_of: select(*MESSAGE_COLUMNS, messages.c.created_revision, messages.c.seq).where(
        one_of(messages.c.seq, "seqs"), messages.c.session_id == bindparam("session_id")
    )
)


def _appended_seqs(conn: Connection, after: int, end: int) -> set[int]:
    """Messages that text was appended to at a revision in (after, end]."""
    seqs: set[int] = set()
    rows = conn.execute(
        select(message_appends.c.first_revision, message_appends.c.payload).where(
            message_appends.c.last_revision > after, message_appends.c.first_revision <= end
        )
    )
    for first, payload in rows:
        for seq, revision, _ in appends.decode(payload, first):
            if after < revision <= end:
                seqs.add(seq)
    return seqs


def _session_changes(
    conn: Connection, after: int, end: int, limit: int, session_id: str | None
) -> list[tuple[int, Change | str]]:
    query = (
        select(*SESSION_COLUMNS, sessions.c.created_revision)
        .where(sessions.c.revision > after, sessions.c.revision <= end)
        .order_by(sessions.c.revision)
        .limit(limit + 1)
    )
    if session_id is not None:
        query = query.where(sessions.c.id == session_id)
    found: list[tuple[int, Change | str]] = []
    for row in conn.execute(query):
        session = session_from_row(row[:-1])
        kind = EventType.CREATED if row[-1] > after else EventType.UPDATED
        found.append((session.revision, Change(Kind.SESSION, kind, session)))
    return found


def _tombstone_changes(
    conn: Connection,
    after: int,
    end: int,
    limit: int,
    session_id: str | None,
    kinds: frozenset[Kind],
) -> list[tuple[int, Change | str]]:
    query = (
        select(tombstones)
        .where(tombstones.c.revision > after, tombstones.c.revision <= end)
        .where(tombstones.c.kind.in_(sorted(k.value for k in kinds)))
        .order_by(tombstones.c.revision)
        .limit(limit + 1)
    )
    if session_id is not None:
        query = query.where(
            (tombstones.c.session_id == session_id)
            | ((tombstones.c.kind == Kind.SESSION.value) & (tombstones.c.id == session_id))
        )
    found: list[tuple[int, Change | str]] = []
    for row in conn.execute(query).mappings():
        payload: Message | Session
        if row["kind"] == Kind.MESSAGE.value:
            role = row["role"] if row["role"] in Role._value2member_map_ else Role.ASSISTANT
            payload = Message(
                row["id"],
                row["session_id"] or "",
                Role(role),
                [],
                created_at=row["created_at"] or row["deleted_at"],
                updated_at=row["deleted_at"],
                revision=row["revision"],
            )
            kind = Kind.MESSAGE
        else:
            payload = Session(
                row["id"],
                "",
                created_at=row["created_at"] or row["deleted_at"],
                updated_at=row["deleted_at"],
                revision=row["revision"],
            )
            kind = Kind.SESSION
        found.append((row["revision"], Change(kind, EventType.DELETED, payload)))
    return found
