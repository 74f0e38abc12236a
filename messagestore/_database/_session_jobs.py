"""Jobs on sessions: each function is the whole body of one transaction (see ``_database``).

Writes record what changed for the feed (``Tx.record``)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pubsub import EventType

from .._changes import Change, Kind
from .._errors import SessionExists, SessionNotFound
from .._model import Session, utc_now
from ._message_jobs import delete_messages
from ._revisions import add_tombstones
from ._rows import SESSION_COLUMNS, session_from_row
from ._schema import messages, sessions
from ._tx import Tx

__all__ = ["create_session", "delete_session", "get_session", "list_sessions", "save_session"]


def create_session(tx: Tx, session: Session, *, chosen_id: bool = False) -> None:
    """Insert ``session`` (id and timestamps set); sets its revision.

    ``chosen_id``: the caller chose the id, which may be taken: ``SessionExists`` then. The
    check follows the counter's lock (``take_revisions``), which every write transaction takes
    first, so of two transactions creating the same id the second sees the first's row; the
    primary key refuses it anyway, should anything slip past.
    """
    session.revision = tx.take_revisions(1)
    if chosen_id:
        taken = tx.conn.execute(select(sessions.c.id).where(sessions.c.id == session.id)).first()
        if taken is not None:
            raise SessionExists(session.id)
    try:
        _insert_session(tx, session)
    except IntegrityError:
        if chosen_id:
            raise SessionExists(session.id) from None
        raise
    tx.record((Change(Kind.SESSION, EventType.CREATED, session),))


def _insert_session(tx: Tx, session: Session) -> None:
    tx.conn.execute(
        insert(sessions).values(
            id=session.id,
            title=session.title,
            parent_session_id=session.parent_session_id,
            created_at=session.created_at,
            updated_at=session.updated_at,
            revision=session.revision,
            created_revision=session.revision,
        )
    )


def save_session(tx: Tx, session: Session) -> None:
    """Store the fields a caller may edit; ``message_count`` and ``created_at`` stay."""
    revision = tx.take_revisions(1)
    row = tx.conn.execute(
        update(sessions)
        .where(sessions.c.id == session.id)
        .values(
            title=session.title,
            parent_session_id=session.parent_session_id,
            prompt_tokens=session.prompt_tokens,
            completion_tokens=session.completion_tokens,
            cost=session.cost,
            summary_message_id=session.summary_message_id,
            updated_at=utc_now(),
            revision=revision,
        )
        .returning(*SESSION_COLUMNS)
    ).first()
    if row is None:
        raise SessionNotFound(session.id)
    tx.record((Change(Kind.SESSION, EventType.UPDATED, session_from_row(row)),))


def delete_session(tx: Tx, session_id: str) -> None:
    """Delete the session and its messages (each a ``DELETED`` change, then the session's)."""
    counter = tx.lock_counter()
    conn = tx.conn
    row = conn.execute(select(*SESSION_COLUMNS).where(sessions.c.id == session_id)).first()
    if row is None:
        raise SessionNotFound(session_id)
    # No recount: the session row goes too.
    changes = delete_messages(conn, counter, messages.c.session_id == session_id, recount=False)
    conn.execute(delete(sessions).where(sessions.c.id == session_id))
    session = session_from_row(row)
    session.revision = counter.take()
    now = utc_now()
    add_tombstones(
        conn,
        [
            {
                "revision": session.revision,
                "kind": Kind.SESSION.value,
                "id": session.id,
                "session_id": session.id,
                "role": None,
                "created_at": session.created_at,
                "deleted_at": now,
            }
        ],
    )
    counter.close()
    changes.append(Change(Kind.SESSION, EventType.DELETED, session))
    tx.record(changes)


def get_session(tx: Tx, session_id: str) -> Session:
    row = tx.conn.execute(select(*SESSION_COLUMNS).where(sessions.c.id == session_id)).first()
    if row is None:
        raise SessionNotFound(session_id)
    return session_from_row(row)


def list_sessions(tx: Tx) -> list[Session]:
    """Every session, newest first."""
    query = select(*SESSION_COLUMNS).order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
    return [session_from_row(row) for row in tx.conn.execute(query)]
