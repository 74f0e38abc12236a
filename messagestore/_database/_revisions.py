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
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.engine import Connection

from pubsub import EventType

from .._changes import Change, Kind
from .._delta import MessageDelta
from .._errors import CorruptRow, RevisionCompacted
from .._growth import FIELD_OF
from .._message_json import iso_time
from .._model import Message, Role, Session
from . import _appends as appends
from ._read_states import HeldState, ReadStates
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
    Rows that fail to decode are reported in ``corrupt`` (and skipped). ``pending``: what a
    read with held states leaves to ``settled()``.
    """

    changes: tuple[Change, ...]
    end: int
    newest: int
    more: bool
    corrupt: tuple[str, ...] = ()
    pending: _Pending | None = None

    def settled(self) -> ChangePage:
        """The page, complete: a read with held states builds its appended changes and
        updates the held states here, on the caller's thread (see ``_Pending``)."""
        if self.pending is None:
            return self
        return self.pending.settle(self)


@dataclass(slots=True)
class _Pending:
    """What a read with held states leaves to be done after the job, on the event loop.

    The job only reads the held states; here they are updated (``clear``, then ``kept``
    in order: a state, or None to forget the message) and the appended changes built
    (``grown``: each held state and its ticks). Building them here, not on the database
    thread, keeps each message's new text on the thread that frees the old one: a large
    string allocated on one thread and freed on another costs several times its copy. A
    read whose result is never settled (its caller was cancelled) leaves the held states as
    they were, still consistent with ``through``.
    """

    states: ReadStates
    after: int
    clear: bool = False
    kept: list[tuple[int, int, Message | None]] = field(default_factory=list)
    grown: list[tuple[int, HeldState, list[_Tick]]] = field(default_factory=list)

    def settle(self, page: ChangePage) -> ChangePage:
        try:
            return self._settle(page)
        except BaseException:
            # Half updated, the held states would no longer match ``through``: drop them
            # all, so the read that follows this failed one decodes every row it needs.
            self.states.clear()
            raise

    def _settle(self, page: ChangePage) -> ChangePage:
        states = self.states
        if self.clear:
            states.clear()
        for seq, base, message in self.kept:
            if message is None:
                states.forget(seq)
            else:
                states.keep(seq, base, message)
        changes = list(page.changes)
        for seq, held, ticks in self.grown:
            # ``_following`` checked that the appends fit the held state: a ValueError here
            # fails the read (the feed reads again, from rows, as the states are dropped).
            change = _grown(held.message, ticks, self.after)
            states.keep(seq, held.base, change.payload)  # type: ignore[arg-type]
            if change.revision > self.after:
                changes.append(change)
        states.through = page.end
        changes.sort(key=lambda change: change.revision)
        return ChangePage(tuple(changes), page.end, page.newest, page.more, page.corrupt)


def read_changes(
    tx: Tx,
    after: int,
    *,
    upto: int | None,
    limit: int,
    session_id: str | None = None,
    kinds: frozenset[Kind] = frozenset(Kind),
    states: ReadStates | None = None,
) -> ChangePage:
    """The newest state of everything in scope that changed after ``after``, up to ``upto``
    (default: the counter now), at most ``limit`` changes, in revision order.

    A row created after ``after`` is reported ``CREATED`` (with its newest state), one that
    changed ``UPDATED``; a tombstone ``DELETED``. Raises ``RevisionCompacted`` if tombstones
    after ``after`` may already be pruned.

    ``states`` (the change feed's, for a read of every session): what earlier reads produced
    of streaming messages (``_read_states``). A message that was only appended to since is
    then not decoded from its row: the appends read are applied to the held state, and the
    change carries its ``MessageDelta`` from the state at ``after``; the read leaves
    ``states`` at the page's end.
    """
    newest, compacted = read_counter(tx)
    if after < compacted:
        raise RevisionCompacted(after, compacted)
    end = newest if upto is None else min(upto, newest)
    if states is not None and session_id is None:
        return _read_following(tx, after, end, newest, limit, kinds, states)
    found: list[tuple[int, Change | str]] = []
    bounded = False
    if Kind.MESSAGE in kinds:
        changed, complete_to = _message_changes(tx, after, end, limit, session_id, None)
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


def _read_following(
    tx: Tx,
    after: int,
    end: int,
    newest: int,
    limit: int,
    kinds: frozenset[Kind],
    states: ReadStates,
) -> ChangePage:
    """``read_changes`` with held states: the page ends where the first of its lists (rows
    decoded whole, sessions, tombstones: at most ``limit`` each) is complete to, and the held
    states are brought exactly there, so the next read follows on. Messages that were only
    appended to are not counted against ``limit``: each costs what was appended to it."""
    wanted = end
    pending = _Pending(states, after)
    found: list[tuple[int, Change | str]] = []
    if Kind.SESSION in kinds:
        sessions = _session_changes(tx.conn, after, end, limit, None)
        end = min(end, _complete_to(sessions, limit, end))
        found += sessions
    tombstones = _tombstone_changes(tx.conn, after, end, limit, None, kinds)
    end = min(end, _complete_to(tombstones, limit, end))
    found += tombstones
    if Kind.MESSAGE in kinds:
        changed, end = _message_changes(tx, after, end, limit, None, pending)
        found += changed
    found = sorted((item for item in found if item[0] <= end), key=lambda item: item[0])
    changes = tuple(c for _, c in found if isinstance(c, Change))
    corrupt = tuple(c for _, c in found if isinstance(c, str))
    return ChangePage(changes, end, newest, end < wanted, corrupt, pending)


def _complete_to(items: list[tuple[int, Change | str]], limit: int, end: int) -> int:
    """Where a list read with ``limit + 1`` rows in revision order is complete to."""
    return items[-1][0] - 1 if len(items) > limit else end


def _message_changes(
    tx: Tx,
    after: int,
    end: int,
    limit: int,
    session_id: str | None,
    pending: _Pending | None,
) -> tuple[list[tuple[int, Change | str]], int]:
    """Messages whose newest state has a revision in (after, end], and the revision up to
    which that list is complete (``end``, or less when ``limit`` cut the row read short).

    A streaming message's newest state is its row plus its appends (``_appends``): it changed
    if its row did or if text was appended to it in the range. With ``pending`` (held
    states), a message held there whose row is unchanged is left to be brought up to date
    from the appends alone; what the read learnt of the others is noted there too.
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
    states = None if pending is None else pending.states
    start = after
    if states is not None and pending is not None:
        through = states.through
        if through is None or through > after:  # what is held cannot be used: start over
            pending.clear, states = True, None
        else:
            start = through
    ticks = _appended(conn, start, end)
    fetched = {row[-1] for row in rows}
    following: dict[int, HeldState] = {}
    if states is not None and pending is not None:
        following = _following(conn, states, ticks, fetched, pending)
    appended = {seq for seq, entries in ticks.items() if entries[-1][0] > after}
    missing = sorted(appended - fetched - following.keys())
    if missing:
        params = {"seqs": values(conn, missing), "session_id": session_id}
        extra = _IN_SESSION_BY_SEQ if session_id is not None else _BY_SEQ
        rows.extend(conn.execute(extra(conn), params).all())
    found: list[tuple[int, Change | str]] = []
    by_seq: dict[int, tuple[Message, bool, int]] = {}
    for row in rows:
        try:
            message = message_from_row(row[:-2])
        except CorruptRow:
            if row[-3] > after:
                found.append((row[-3], row[0]))
            if pending is not None:
                pending.kept.append((row[-1], 0, None))
            continue
        by_seq[row[-1]] = (message, row[-2] > after, row[-3])
    appends.load(conn, {seq: m for seq, (m, _, _) in by_seq.items()}, tx.stream_cache)
    for seq, (message, created, base) in by_seq.items():
        if after < message.revision <= end:
            kind = EventType.CREATED if created else EventType.UPDATED
            found.append((message.revision, Change(Kind.MESSAGE, kind, message)))
        if pending is not None:  # held from the end of this read, if that is its state
            pending.kept.append((seq, base, message if message.revision <= end else None))
    if pending is not None:
        pending.grown += [(seq, held, ticks[seq]) for seq, held in following.items()]
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
# Rows whose revision is one of the given: answered from ``ix_messages_revision`` alone (the
# index holds the revision and the ``seq``), so a row's large ``parts`` are never touched (on
# SQLite, reaching a column stored after them walks their overflow pages).
_ROWS_AT = ListStatement(
    lambda one_of: select(messages.c.seq, messages.c.revision).where(
        one_of(messages.c.revision, "revisions")
    )
)

_Tick = tuple[int, Any, list[appends.Append]]
"""One tick's appends to one message: (revision, the row's ``updated_at``, appends)."""


def _appended(conn: Connection, after: int, end: int) -> dict[int, list[_Tick]]:
    """Per message ``seq``, its ticks with a revision in (after, end], oldest first."""
    ticks: dict[int, list[_Tick]] = {}
    rows = conn.execute(
        select(
            message_appends.c.first_revision,
            message_appends.c.updated_at,
            message_appends.c.payload,
        )
        .where(message_appends.c.last_revision > after, message_appends.c.first_revision <= end)
        .order_by(message_appends.c.last_revision)
    )
    for first, updated_at, payload in rows:
        for seq, revision, entry in appends.decode(payload, first):
            if after < revision <= end:
                ticks.setdefault(seq, []).append((revision, updated_at, entry))
    return ticks


def _following(
    conn: Connection,
    states: ReadStates,
    ticks: dict[int, list[_Tick]],
    fetched: set[int],
    pending: _Pending,
) -> dict[int, HeldState]:
    """The held states of the messages appended to (``ticks``) but not ``fetched`` whose row
    still has the revision they were built on and whose appends fit them; the others are to
    be forgotten and read whole (their row was rewritten or deleted). Revisions are unique: a
    row found at a state's base revision is that state's row, unchanged."""
    held = {
        seq: state for seq in ticks if seq not in fetched and (state := states.get(seq)) is not None
    }
    if not held:
        return {}
    bases = sorted({state.base for state in held.values()})
    rows = conn.execute(_ROWS_AT(conn), {"revisions": values(conn, bases)})
    current: dict[int, int] = {seq: revision for seq, revision in rows}  # noqa: C416
    for seq, state in list(held.items()):
        if current.get(seq) != state.base or not _fits(state.message, ticks[seq]):
            pending.kept.append((seq, 0, None))
            del held[seq]
    return held


def _fits(message: Message, ticks: list[_Tick]) -> bool:
    """True if every append of ``ticks`` lands on a part of ``message`` that has that streamed
    field (appends change neither the number nor the kinds of parts, so checking against the
    held state is checking against every state the ticks build)."""
    parts = message.parts
    count = len(parts)
    for _, _, entry in ticks:
        for index, code, _text in entry:
            if not 0 <= index < count or FIELD_OF.get(type(parts[index])) != code:
                return False
    return True


def _grown(message: Message, ticks: list[_Tick], after: int) -> Change:
    """The change of ``message`` (the held state) made by ``ticks``: its newest state, with the
    delta from its state at ``after`` (None if nothing was appended after ``after``).

    Costs the appended text and the number of parts, not the message's size: only the parts
    appended to are rebuilt. ``ValueError`` if an append does not fit the state.
    """
    at_after = message
    if ticks[0][0] <= after:  # committed by this process and published without being read
        earlier = [tick for tick in ticks if tick[0] <= after]
        ticks = ticks[len(earlier) :]
        at_after = _with(message, _joined(earlier), earlier[-1][0], earlier[-1][1])
    if not ticks:
        return Change(Kind.MESSAGE, EventType.UPDATED, at_after, terminal=False)
    joined = _joined(ticks)
    state = _with(at_after, joined, ticks[-1][0], ticks[-1][1])
    # A pure append changes no top-level field but ``updated_at`` (compared as its JSON form
    # is: the instant and the UTC offset).
    before, now = at_after.updated_at, state.updated_at
    changed = now != before or now.utcoffset() != before.utcoffset()
    delta = MessageDelta(
        state.id,
        at_after.revision,
        state.revision,
        {index: text for (index, _), text in joined.items()},
        {},
        {"updated_at": iso_time(now)} if changed else {},
    )
    return Change(Kind.MESSAGE, EventType.UPDATED, state, terminal=False, delta=delta)


def _joined(ticks: list[_Tick]) -> dict[tuple[int, int], str]:
    """The ticks' appends concatenated per (part index, field)."""
    if len(ticks) == 1:
        return {(index, code): text for index, code, text in ticks[0][2]}
    texts: dict[tuple[int, int], list[str]] = {}
    for _, _, entry in ticks:
        for index, code, appended in entry:
            texts.setdefault((index, code), []).append(appended)
    return {slot: "".join(parts) for slot, parts in texts.items()}


def _with(
    message: Message, joined: dict[tuple[int, int], str], revision: int, updated_at: Any
) -> Message:
    """A new message: ``message`` with ``joined`` appended, at ``revision``."""
    parts = list(message.parts)
    appends.apply_to(parts, [(index, code, text) for (index, code), text in joined.items()])
    return Message(
        message.id,
        message.session_id,
        message.role,
        parts,
        message.model,
        message.provider,
        message.created_at,
        updated_at,
        message.is_summary_message,
        revision,
    )


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
