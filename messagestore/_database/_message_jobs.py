"""Jobs on messages: each function is the whole body of one transaction (see ``_database``).

Writes take their revisions first (``Tx.take_revisions``, ``Tx.lock_counter``), then change
rows, keep ``sessions.message_count`` right in the same transaction, and record what changed
for the feed (``Tx.record``). Reads return model objects. Every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from pubsub import EventType

from .._changes import Change, Kind
from .._codec import decode_parts
from .._errors import CorruptRow, MessageNotFound, SessionNotFound
from .._model import Message, Role, ToolResult, utc_now
from . import _appends as appends
from ._revisions import Counter, add_tombstones
from ._rows import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    deleted_message,
    message_from_row,
    message_values,
    session_from_row,
)
from ._schema import messages, sessions
from ._tx import Tx

__all__ = [
    "delete_message",
    "delete_messages",
    "delete_session_messages",
    "get_message",
    "insert_message",
    "list_messages",
    "settle_answered",
    "tool_results",
]


# -- creating --------------------------------------------------------------------------------


# Statements built once (SQLAlchemy memoizes their cache keys; see ``_revisions``).
_COUNT_ONE_MORE = (
    update(sessions)
    .where(sessions.c.id == bindparam("sid"))
    .values(
        message_count=sessions.c.message_count + 1,
        updated_at=bindparam("now"),
        revision=bindparam("rev"),
    )
    .returning(*SESSION_COLUMNS)
)
_INSERT = insert(messages)
_IN_PROGRESS_OF_SESSION = select(
    messages.c.seq, messages.c.id, messages.c.role, messages.c.parts
).where(messages.c.session_id == bindparam("sid"), messages.c.in_progress.is_(True))


def insert_message(tx: Tx, message: Message) -> None:
    """Insert ``message`` (id and timestamps set), stamped with the transaction's writer id,
    and count it in its session.

    Sets ``message.revision``. Records the changes: the message ``CREATED``, its session
    ``UPDATED`` (its count changed). ``SessionNotFound`` if the session does not exist.
    """
    first = tx.take_revisions(2)
    message.revision = first
    conn = tx.conn
    row = conn.execute(
        _COUNT_ONE_MORE, {"sid": message.session_id, "now": utc_now(), "rev": first + 1}
    ).first()
    if row is None:
        raise SessionNotFound(message.session_id)
    conn.execute(_INSERT, message_values(message, tx.writer_id))
    if message.tool_results:
        settle_answered(conn, {message.session_id})
    tx.record(
        (
            Change(Kind.MESSAGE, EventType.CREATED, message),
            Change(Kind.SESSION, EventType.UPDATED, session_from_row(row), terminal=False),
        )
    )


def settle_answered(conn: Connection, session_ids: Iterable[str]) -> None:
    """Clear ``in_progress`` on finished messages of these sessions whose every tool call a
    stored ``ToolResult`` now answers (their writer dying can no longer leave them half done).
    """
    for session_id in session_ids:
        rows = conn.execute(_IN_PROGRESS_OF_SESSION, {"sid": session_id}).all()
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

    The caller locked the counter first (``Tx.lock_counter``) and closes it after. A corrupt
    row is still deleted; it is reported with its parts left empty.
    """
    result = conn.execute(delete(messages).where(where).returning(*MESSAGE_COLUMNS, messages.c.seq))
    rows = sorted(result.all(), key=lambda row: row[-1])
    if not rows:
        return []
    deleted = {row[-1]: deleted_message(row[:-1]) for row in rows}
    appends.load(conn, deleted)  # the state as it was, streamed text included
    appends.close_streams(conn, [m.id for m in deleted.values()])
    now = utc_now()
    changes: list[Change] = []
    stones: list[dict[str, Any]] = []
    per_session: dict[str, int] = {}
    for message in deleted.values():
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


def delete_message(tx: Tx, message_id: str) -> None:
    """Delete one message (records the changes); ``MessageNotFound`` if it does not exist."""
    counter = tx.lock_counter()
    changes = delete_messages(tx.conn, counter, messages.c.id == message_id)
    if not changes:
        raise MessageNotFound(message_id)
    counter.close()
    tx.record(changes)


def delete_session_messages(tx: Tx, session_id: str) -> None:
    """Delete every message of the session (records the changes)."""
    counter = tx.lock_counter()
    changes = delete_messages(tx.conn, counter, messages.c.session_id == session_id)
    counter.close()
    tx.record(changes)


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


def get_message(tx: Tx, message_id: str) -> Message:
    """The message as stored: its row, with the text it streamed since (``_appends``)."""
    row = tx.conn.execute(
        select(*MESSAGE_COLUMNS, messages.c.seq).where(messages.c.id == message_id)
    ).first()
    if row is None:
        raise MessageNotFound(message_id)
    message = message_from_row(row[:-1])
    appends.load(tx.conn, {row[-1]: message}, tx.stream_cache)
    return message


def list_messages(tx: Tx, *where: Any) -> list[Message]:
    """Matching messages in creation order, each as ``get_message`` reads it."""
    query = select(*MESSAGE_COLUMNS, messages.c.seq).where(*where).order_by(messages.c.seq)
    by_seq = {row[-1]: message_from_row(row[:-1]) for row in tx.conn.execute(query).all()}
    appends.load(tx.conn, by_seq, tx.stream_cache)
    return list(by_seq.values())
