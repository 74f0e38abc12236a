"""The recovery sweep's SQL: one transaction (what it repairs is decided in ``_recovery``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, not_, select, update

from pubsub import EventType

from .._changes import Change, Kind
from .._clock import database_now
from .._errors import CorruptRow
from .._model import Message, utc_now
from . import _appends as appends
from ._group_commit import rewrite_messages
from ._lease_jobs import writer_has_open_rows
from ._message_jobs import tool_results
from ._rows import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    message_from_row,
    message_values,
    session_from_row,
)
from ._schema import messages, sessions, writers
from ._tx import Tx

__all__ = ["Decide", "SweepResult", "sweep_abandoned"]

# (candidates, answered tool-call ids per session, database now) -> (to rewrite, to insert)
Decide = Callable[
    [list[Message], dict[str, set[str]], datetime], tuple[list[Message], list[Message]]
]


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep changed: how many messages it repaired, the messages it inserted,
    corrupt candidates left for a later sweep, how many rows were checked and how many ended
    leases were removed. Its changes (rewritten and inserted messages, recounted sessions) are
    recorded on the transaction, in revision order."""

    repaired: int
    created: tuple[Message, ...]
    corrupt: tuple[str, ...]
    checked: int
    writers_removed: int


def sweep_abandoned(
    tx: Tx, own_writer_id: str, keep: frozenset[str], decide: Decide
) -> SweepResult:
    """Repair what ended writers left in progress, in ONE transaction.

    Ended writers are those whose lease row expired (crashed, killed, hung, or closed: a
    closing store expires its row). Their in-progress rows — read through a partial index, so
    the cost follows the number of unfinished messages, not the history — are decoded and
    handed to ``decide`` with the tool-call ids that results in their sessions already answer.
    ``decide`` returns the messages to rewrite and to insert; every candidate is then marked
    checked (``in_progress`` false), except those in ``keep`` (this store has a change
    buffered for them) and corrupt ones. A lease row is deleted once no in-progress row
    carries its id. The own writer is never ended here. The counter row is locked first, as
    in every write job; on PostgreSQL the ended leases and candidate rows are locked after it.
    """
    counter = tx.lock_counter()
    conn = tx.conn
    now = database_now(conn)
    postgres = conn.dialect.name == "postgresql"
    ended_query = select(writers.c.id).where(
        writers.c.expires_at < now, writers.c.id != own_writer_id
    )
    if postgres:
        ended_query = ended_query.with_for_update()
    ended = sorted(conn.execute(ended_query).scalars())
    if not ended:
        return SweepResult(0, (), (), 0, 0)
    query = (
        select(*MESSAGE_COLUMNS, messages.c.seq)
        .where(messages.c.writer_id.in_(ended), messages.c.in_progress.is_(True))
        .order_by(messages.c.seq)
    )
    if postgres:
        query = query.with_for_update()
    by_seq: dict[int, Message] = {}
    corrupt: list[str] = []
    for row in conn.execute(query).all():
        if row[0] in keep:
            continue
        try:
            by_seq[row[-1]] = message_from_row(row[:-1])
        except CorruptRow:
            corrupt.append(row[0])
    appends.load(conn, by_seq)  # what they streamed after their last whole write
    candidates = list(by_seq.values())
    checked = list(by_seq)
    answered = tool_results(conn, {m.session_id for m in candidates if m.tool_calls})
    updated, created = decide(candidates, answered, now)
    changes: list[Change] = []
    for message in updated:
        message.revision = counter.take()
        changes.append(Change(Kind.MESSAGE, EventType.UPDATED, message))
    if updated:
        rewrite_messages(conn, updated)
    for message in created:
        message.revision = counter.take()
        conn.execute(insert(messages).values(message_values(message, None)))
        changes.append(Change(Kind.MESSAGE, EventType.CREATED, message))
        counted = conn.execute(
            update(sessions)
            .where(sessions.c.id == message.session_id)
            .values(
                message_count=sessions.c.message_count + 1,
                updated_at=utc_now(),
                revision=counter.take(),
            )
            .returning(*SESSION_COLUMNS)
        ).first()
        if counted is not None:
            changes.append(Change(Kind.SESSION, EventType.UPDATED, session_from_row(counted)))
    if checked:
        for start in range(0, len(checked), 500):
            conn.execute(
                update(messages)
                .where(messages.c.seq.in_(checked[start : start + 500]))
                .values(in_progress=False)
            )
    removed = conn.execute(
        delete(writers).where(writers.c.id.in_(ended), not_(writer_has_open_rows()))
    )
    counter.close()
    tx.record(changes)
    return SweepResult(
        len(updated),
        tuple(created),
        tuple(corrupt),
        len(checked),
        removed.rowcount,
    )
