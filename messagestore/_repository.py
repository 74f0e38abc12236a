"""All of messagestore's SQL, and nothing else.

Every statement is built with SQLAlchemy Core, so every value is a bound parameter. Each public
method is one transaction: writes go through the engine (``BEGIN IMMEDIATE`` on SQLite), reads
through its read-only view. The services above hold no SQL and no connections.

``sessions.message_count`` is kept here, in the same transaction as the insert or delete that
changes it, so it is right on every backend without triggers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._codec import decode_parts, encode_parts
from ._engine import reader
from ._errors import CorruptRow, MessageNotFound, SessionNotFound
from ._model import Message, Role, Session, utc_now
from ._schema import messages, sessions

__all__ = ["Repository", "WriteResult", "new_id"]


def new_id() -> str:
    """A fresh random identifier for a session or message."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch write did: rows updated, bytes of parts written, ids that no longer exist."""

    rows: int
    bytes: int
    missing: frozenset[str]


_SESSION_COLUMNS = (
    sessions.c.id,
    sessions.c.title,
    sessions.c.parent_session_id,
    sessions.c.message_count,
    sessions.c.prompt_tokens,
    sessions.c.completion_tokens,
    sessions.c.cost,
    sessions.c.summary_message_id,
    sessions.c.created_at,
    sessions.c.updated_at,
)
_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.session_id,
    messages.c.role,
    messages.c.parts,
    messages.c.model,
    messages.c.provider,
    messages.c.created_at,
    messages.c.updated_at,
    messages.c.is_summary_message,
)


def _session_from_row(row: Sequence[Any]) -> Session:
    return Session(*row)


def _message_from_row(row: Sequence[Any]) -> Message:
    message_id, session_id, role, parts, model, provider, created, updated, summary = row
    try:
        role = Role(role)
    except ValueError:
        raise CorruptRow("message", message_id, f"unknown role {role!r}") from None
    return Message(
        message_id,
        session_id,
        role,
        decode_parts(message_id, parts),
        model,
        provider,
        created,
        updated,
        bool(summary),
    )


class Repository:
    """Sessions and messages in one database, one transaction per call."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = reader(engine)

    @property
    def engine(self) -> AsyncEngine:
        """The engine this repository writes through."""
        return self._engine

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(self, title: str, parent_session_id: str | None) -> Session:
        now = utc_now()
        session = Session(new_id(), title, parent_session_id, created_at=now, updated_at=now)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    id=session.id,
                    title=title,
                    parent_session_id=parent_session_id,
                    created_at=now,
                    updated_at=now,
                )
            )
        return session

    async def get_session(self, session_id: str) -> Session:
        async with self._reader.connect() as conn:
            return await self._get_session(conn, session_id)

    async def _get_session(self, conn: AsyncConnection, session_id: str) -> Session:
        result = await conn.execute(select(*_SESSION_COLUMNS).where(sessions.c.id == session_id))
        row = result.first()
        if row is None:
            raise SessionNotFound(session_id)
        return _session_from_row(row)

    async def list_sessions(self) -> list[Session]:
        """Every session, newest first."""
        query = select(*_SESSION_COLUMNS).order_by(
            sessions.c.created_at.desc(), sessions.c.id.desc()
        )
        async with self._reader.connect() as conn:
            return [_session_from_row(row) for row in await conn.execute(query)]

    async def save_session(self, session: Session) -> Session:
        """Store the fields a caller may edit; ``message_count`` and ``created_at`` stay."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
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
                )
            )
            if result.rowcount != 1:
                raise SessionNotFound(session.id)
            return await self._get_session(conn, session.id)

    async def delete_session(self, session_id: str) -> list[Message]:
        """Delete the session and its messages; return the deleted messages."""
        async with self._engine.begin() as conn:
            deleted = await self._delete_messages(conn, messages.c.session_id == session_id)
            result = await conn.execute(delete(sessions).where(sessions.c.id == session_id))
            if result.rowcount != 1:
                raise SessionNotFound(session_id)
        return deleted

    # -- messages ------------------------------------------------------------------------------

    async def create_message(self, message: Message) -> None:
        """Insert ``message`` (id and timestamps already set) and count it in its session."""
        async with self._engine.begin() as conn:
            counted = await conn.execute(
                update(sessions)
                .where(sessions.c.id == message.session_id)
                .values(message_count=sessions.c.message_count + 1, updated_at=utc_now())
            )
            if counted.rowcount != 1:
                raise SessionNotFound(message.session_id)
            await conn.execute(insert(messages).values(_message_values(message)))

    async def get_message(self, message_id: str) -> Message:
        async with self._reader.connect() as conn:
            result = await conn.execute(
                select(*_MESSAGE_COLUMNS).where(messages.c.id == message_id)
            )
            row = result.first()
        if row is None:
            raise MessageNotFound(message_id)
        return _message_from_row(row)

    async def list_messages(self, session_id: str) -> list[Message]:
        """The session's messages in creation order."""
        return await self._list(messages.c.session_id == session_id)

    async def list_user_messages(self, session_id: str) -> list[Message]:
        return await self._list(
            messages.c.session_id == session_id, messages.c.role == Role.USER.value
        )

    async def list_all_user_messages(self) -> list[Message]:
        return await self._list(messages.c.role == Role.USER.value)

    async def _list(self, *where: Any) -> list[Message]:
        query = select(*_MESSAGE_COLUMNS).where(*where).order_by(messages.c.seq)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_message_from_row(row) for row in rows]

    async def write_messages(self, batch: Sequence[Message]) -> WriteResult:
        """Write the mutable fields of every message in ``batch`` in ONE transaction.

        Messages whose row no longer exists are skipped and reported in ``missing``; on
        PostgreSQL the existing rows are locked first, so a concurrent delete cannot slip
        between the check and the write.
        """
        if not batch:
            return WriteResult(0, 0, frozenset())
        wanted = {m.id for m in batch}
        async with self._engine.begin() as conn:
            found = await self._existing_ids(conn, wanted)
            params = [_update_params(m) for m in batch if m.id in found]
            if params:
                await conn.execute(_UPDATE_MESSAGE, params)
        written = sum(len(p["parts"]) for p in params)
        return WriteResult(len(params), written, frozenset(wanted - found))

    async def _existing_ids(self, conn: AsyncConnection, ids: Iterable[str]) -> set[str]:
        query = select(messages.c.id).where(messages.c.id.in_(list(ids)))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return set((await conn.execute(query)).scalars())

    async def delete_message(self, message_id: str) -> Message:
        """Delete one message, uncount it, and return it as it was stored."""
        async with self._engine.begin() as conn:
            deleted = await self._delete_messages(conn, messages.c.id == message_id)
            if not deleted:
                raise MessageNotFound(message_id)
        return deleted[0]

    async def delete_session_messages(self, session_id: str) -> list[Message]:
        """Delete every message of the session and return them."""
        async with self._engine.begin() as conn:
            return await self._delete_messages(conn, messages.c.session_id == session_id)

    async def _delete_messages(self, conn: AsyncConnection, where: Any) -> list[Message]:
        """Delete matching messages, fix their sessions' counts, return what was deleted.

        A corrupt row is still deleted; it is returned with its parts left empty.
        """
        result = await conn.execute(
            delete(messages).where(where).returning(*_MESSAGE_COLUMNS, messages.c.seq)
        )
        rows = sorted(result.all(), key=lambda row: row[-1])
        per_session: dict[str, int] = {}
        for row in rows:
            per_session[row[1]] = per_session.get(row[1], 0) + 1
        for session_id, count in per_session.items():
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(message_count=sessions.c.message_count - count, updated_at=utc_now())
            )
        return [_deleted_message(row[:-1]) for row in rows]

    async def count_messages(self, session_id: str) -> int:
        """Messages stored for the session, counted (not the cached ``message_count``)."""
        query = select(func.count()).where(messages.c.session_id == session_id)
        async with self._reader.connect() as conn:
            return int((await conn.execute(query)).scalar_one())


def _deleted_message(row: Sequence[Any]) -> Message:
    try:
        return _message_from_row(row)
    except CorruptRow:
        return Message(row[0], row[1], Role.ASSISTANT, [], created_at=row[6], updated_at=row[7])


def _message_values(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": message.role.value,
        "parts": encode_parts(message.parts),
        "model": message.model,
        "provider": message.provider,
        "is_summary_message": message.is_summary_message,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
    }


def _update_params(message: Message) -> dict[str, Any]:
    return {
        "b_id": message.id,
        "parts": encode_parts(message.parts),
        "model": message.model,
        "provider": message.provider,
        "is_summary_message": message.is_summary_message,
        "updated_at": message.updated_at,
    }


# SET columns come from the parameter keys of each executemany row; the id is renamed so it
# does not collide with the column of the same name.
_UPDATE_MESSAGE = update(messages).where(messages.c.id == bindparam("b_id"))
