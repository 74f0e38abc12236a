"""All of messagestore's SQL, and nothing else.

Every statement is built with SQLAlchemy Core, so every value is a bound parameter. Each public
method is one transaction: writes go through the engine (``BEGIN IMMEDIATE`` on SQLite), reads
through its read-only view. The services above hold no SQL and no connections.

``sessions.message_count`` is kept here, in the same transaction as the insert or delete that
changes it, so it is right on every backend without triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, not_, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._codec import decode_parts, encode_parts
from .._errors import CorruptRow, InvalidMessage, MessageNotFound, SessionNotFound
from .._model import Message, Role, Session, ToolResult, utc_now
from ._engine import reader
from ._schema import messages, sessions, writers

__all__ = [
    "Repository",
    "SweepResult",
    "WriteResult",
    "WriterInfo",
    "check_storable",
    "new_id",
    "storable",
]


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
        self._batch_update = _BatchUpdate(engine.dialect)
        self._write_gate = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # Recorded in ``messages.writer_id`` by every insert and write (the store's lease id).
        self.writer_id: str | None = None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction.

        SQLite has one writer at a time. Writers of this process queue on an asyncio lock,
        in order and without sleeping, instead of in SQLite's busy handler, which polls with
        growing sleeps (a terminal write arriving during a group commit would otherwise pay
        them). Writers in other processes still meet the busy timeout. Never nested.
        """
        if self._write_gate is None:
            async with self._engine.begin() as conn:
                yield conn
            return
        async with self._write_gate, self._engine.begin() as conn:
            yield conn

    @property
    def engine(self) -> AsyncEngine:
        """The engine this repository writes through."""
        return self._engine

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(self, title: str, parent_session_id: str | None) -> Session:
        _check_session_text(title, parent_session_id)
        now = utc_now()
        session = Session(new_id(), title, parent_session_id, created_at=now, updated_at=now)
        async with self._write() as conn:
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
        if not storable(session_id):
            raise SessionNotFound(session_id)
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
        _check_session_text(session.title, session.parent_session_id)
        if not storable(session.id):
            raise SessionNotFound(session.id)
        async with self._write() as conn:
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
        if not storable(session_id):
            raise SessionNotFound(session_id)
        async with self._write() as conn:
            deleted = await self._delete_messages(conn, messages.c.session_id == session_id)
            result = await conn.execute(delete(sessions).where(sessions.c.id == session_id))
            if result.rowcount != 1:
                raise SessionNotFound(session_id)
        return deleted

    # -- messages ------------------------------------------------------------------------------

    async def create_message(self, message: Message) -> None:
        """Insert ``message`` (id and timestamps already set) and count it in its session."""
        if not storable(message.session_id):
            raise SessionNotFound(message.session_id)
        async with self._write() as conn:
            counted = await conn.execute(
                update(sessions)
                .where(sessions.c.id == message.session_id)
                .values(message_count=sessions.c.message_count + 1, updated_at=utc_now())
            )
            if counted.rowcount != 1:
                raise SessionNotFound(message.session_id)
            await conn.execute(
                insert(messages).values(_message_values(message) | {"writer_id": self.writer_id})
            )

    async def get_message(self, message_id: str) -> Message:
        if not storable(message_id):
            raise MessageNotFound(message_id)
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
        if not storable(session_id):
            return []
        return await self._list(messages.c.session_id == session_id)

    async def list_user_messages(self, session_id: str) -> list[Message]:
        if not storable(session_id):
            return []
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

        This is the group commit, run once per tick for every streaming message, so it skips
        SQLAlchemy's per-row work: the UPDATE is compiled once for the dialect and the rows go
        to the driver's ``executemany`` as plain tuples, encoded before the transaction opens
        (the write lock is held only for the statement).

        Messages whose row no longer exists are skipped and reported in ``missing``. On
        PostgreSQL the rows are locked first (``SELECT ... FOR UPDATE``), so a concurrent
        delete cannot slip between the check and the write; on SQLite the transaction holds
        the database's write lock, so the statement's row count tells whether any row is
        missing, and only then are the ids looked up.
        """
        if not batch:
            return WriteResult(0, 0, frozenset())
        statement = self._batch_update
        rows = [statement.row(m, self.writer_id) for m in batch]
        missing: frozenset[str] = frozenset()
        async with self._write() as conn:
            if statement.lock_first:
                found = await self._existing_ids(conn, [m.id for m in batch])
                rows = [row for row, m in zip(rows, batch, strict=True) if m.id in found]
                missing = frozenset(m.id for m in batch if m.id not in found)
            updated = (await conn.exec_driver_sql(statement.sql, rows)).rowcount if rows else 0
            if not statement.lock_first and updated != len(rows):
                found = await self._existing_ids(conn, [m.id for m in batch])
                rows = [row for row, m in zip(rows, batch, strict=True) if m.id in found]
                missing = frozenset(m.id for m in batch if m.id not in found)
        written = sum(len(row[statement.parts_at]) for row in rows)
        return WriteResult(len(rows), written, missing)

    async def _existing_ids(self, conn: AsyncConnection, ids: Iterable[str]) -> set[str]:
        query = select(messages.c.id).where(messages.c.id.in_(list(ids)))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return set((await conn.execute(query)).scalars())

    async def delete_message(self, message_id: str) -> Message:
        """Delete one message, uncount it, and return it as it was stored."""
        if not storable(message_id):
            raise MessageNotFound(message_id)
        async with self._write() as conn:
            deleted = await self._delete_messages(conn, messages.c.id == message_id)
            if not deleted:
                raise MessageNotFound(message_id)
        return deleted[0]

    async def delete_session_messages(self, session_id: str) -> list[Message]:
        """Delete every message of the session and return them."""
        if not storable(session_id):
            return []
        async with self._write() as conn:
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

    # == writer leases and the recovery sweep (issue 7) =======================================
    #
    # Lease times come from the database's clock on PostgreSQL (stores on several hosts share
    # one server, so one clock decides) and from this machine's clock on SQLite (every process
    # sharing a SQLite file runs on this machine, so they share its clock; SQLite has no UTC
    # clock function with microseconds).

    async def register_writer(self, writer: WriterInfo, ttl: float) -> datetime:
        """Insert the writer's lease row, valid for ``ttl`` seconds; return its expiry."""
        async with self._write() as conn:
            return await self._insert_writer(conn, writer, ttl)

    async def renew_writer(self, writer: WriterInfo, ttl: float) -> bool:
        """Push the lease's expiry ``ttl`` seconds past now; True if the row still existed.

        A row that vanished (a sweep elsewhere judged the lease expired) is inserted again, and
        False tells the caller its lease had lapsed.
        """
        async with self._write() as conn:
            now = await _database_now(conn)
            result = await conn.execute(
                update(writers)
                .where(writers.c.id == writer.id)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
            )
            if result.rowcount == 1:
                return True
            await self._insert_writer(conn, writer, ttl)
            return False

    async def retire_writer(self, writer_id: str) -> None:
        """End the lease (the store closed): delete its row, or, while messages still carry
        its id, expire it now so that the next sweep checks them (and then deletes it)."""
        async with self._write() as conn:
            gone = await conn.execute(
                delete(writers).where(writers.c.id == writer_id, not_(_writer_has_rows()))
            )
            if gone.rowcount == 0:
                now = await _database_now(conn)
                await conn.execute(
                    update(writers)
                    .where(writers.c.id == writer_id)
                    .values(heartbeat_at=now, expires_at=now)
                )

    async def _insert_writer(
        self, conn: AsyncConnection, writer: WriterInfo, ttl: float
    ) -> datetime:
        now = await _database_now(conn)
        expires = now + timedelta(seconds=ttl)
        await conn.execute(
            insert(writers).values(
                id=writer.id,
                pid=writer.pid,
                host=writer.host,
                started_at=now,
                heartbeat_at=now,
                expires_at=expires,
            )
        )
        return expires

    async def sweep_abandoned(
        self, own_writer_id: str, keep: Callable[[str], bool], decide: Decide
    ) -> SweepResult:
        """One recovery sweep, in ONE write transaction.

        Ended writers are those whose lease row expired (crashed, killed, hung, or closed: a
        closing store expires its row). Their rows that may need repair — an assistant message
        without a finish, or any message with a tool call — are decoded and handed to
        ``decide`` with the tool-call ids that results in their sessions already answer.
        ``decide`` returns the messages to rewrite and the messages to insert; both are stored
        with ``writer_id`` NULL ("checked"), and so are all the other rows of ended writers,
        except those ``keep(id)`` claims (this store has a change buffered for them) and
        corrupt ones. A lease row is deleted once no message carries its id; the held rows keep
        theirs, so a later sweep sees them again. The own writer is never ended here.

        Only the (few) ended writers' rows are read, through the ``writer_id`` index: live
        writers' rows and checked rows cost nothing however many there are. On PostgreSQL the
        ended leases and the candidate rows are locked, so concurrent sweeps serialize; on
        SQLite ``BEGIN IMMEDIATE`` does that.
        """
        async with self._write() as conn:
            now = await _database_now(conn)
            ended_query = select(writers.c.id).where(
                writers.c.expires_at < now, writers.c.id != own_writer_id
            )
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                ended_query = ended_query.with_for_update()
            ended = sorted((await conn.execute(ended_query)).scalars())
            if not ended:
                return SweepResult((), (), (), 0, 0)
            of_ended = messages.c.writer_id.in_(ended)
            look = or_(
                and_(messages.c.role == Role.ASSISTANT.value, not_(_has_tag("finish"))),
                _has_tag("tool_call"),
            )
            query = select(*_MESSAGE_COLUMNS, messages.c.seq).where(of_ended, look)
            if postgres:
                query = query.with_for_update()
            candidates: list[Message] = []
            held: list[int] = []
            corrupt: list[str] = []
            for row in (await conn.execute(query.order_by(messages.c.seq))).all():
                if keep(row[0]):
                    held.append(row[-1])
                    continue
                try:
                    candidates.append(_message_from_row(row[:-1]))
                except CorruptRow:
                    corrupt.append(row[0])
                    held.append(row[-1])
            results = await self._tool_results(
                conn, {m.session_id for m in candidates if m.tool_calls}
            )
            updated, created = decide(candidates, results, now)
            if updated:
                batch = self._batch_update
                await conn.exec_driver_sql(batch.sql, [batch.row(m, None) for m in updated])
            for message in created:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == message.session_id)
                    .values(message_count=sessions.c.message_count + 1, updated_at=now)
                )
                await conn.execute(insert(messages).values(_message_values(message)))
            release = update(messages).where(of_ended).values(writer_id=None)
            if held:
                release = release.where(messages.c.seq.not_in(held))
            released = await conn.execute(release)
            removed = await conn.execute(
                delete(writers).where(writers.c.id.in_(ended), not_(_writer_has_rows()))
            )
        return SweepResult(
            tuple(updated), tuple(created), tuple(corrupt), released.rowcount, removed.rowcount
        )

    async def _tool_results(
        self, conn: AsyncConnection, session_ids: set[str]
    ) -> dict[str, set[str]]:
        """For each session, the tool-call ids that a stored ``ToolResult`` answers."""
        answered: dict[str, set[str]] = {sid: set() for sid in session_ids}
        if not session_ids:
            return answered
        query = select(messages.c.id, messages.c.session_id, messages.c.parts).where(
            messages.c.session_id.in_(sorted(session_ids)), _has_tag("tool_result")
        )
        for message_id, session_id, parts in (await conn.execute(query)).all():
            try:
                decoded = decode_parts(message_id, parts)
            except CorruptRow:
                continue  # its results are unknown; the calls get an error result instead
            answered[session_id].update(
                p.tool_call_id for p in decoded if isinstance(p, ToolResult)
            )
        return answered


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


class _BatchUpdate:
    """The batch UPDATE of ``write_messages``, compiled once for one dialect."""

    _SET = ("parts", "model", "provider", "is_summary_message", "updated_at", "writer_id")

    def __init__(self, dialect: Dialect) -> None:
        statement = update(messages).where(messages.c.id == bindparam("b_id"))
        compiled = statement.compile(dialect=dialect, column_keys=list(self._SET))
        order = compiled.positiontup
        if order is None:  # a named paramstyle: neither aiosqlite nor asyncpg uses one
            raise NotImplementedError(f"driver paramstyle {dialect.paramstyle!r}")
        self.sql = compiled.string
        self.order = tuple(order)
        self.parts_at = self.order.index("parts")
        self.lock_first = dialect.name == "postgresql"
        self._time: Callable[[datetime], Any] = (
            messages.c.updated_at.type.bind_processor(dialect) or _unchanged
        )
        # A batch shares one ``updated_at``: convert it once, not once per row.
        self._last_time: tuple[datetime | None, Any] = (None, None)

    def row(self, message: Message, writer_id: str | None) -> tuple[Any, ...]:
        """The driver-level parameters for one message, in statement order."""
        values = {
            "b_id": message.id,
            "writer_id": writer_id,
            "parts": encode_parts(message.parts),
            "model": message.model,
            "provider": message.provider,
            "is_summary_message": message.is_summary_message,
            "updated_at": self._driver_time(message.updated_at),
        }
        return tuple([values[name] for name in self.order])

    def _driver_time(self, value: datetime) -> Any:
        last, converted = self._last_time
        if value is not last:
            converted = self._time(value)
            self._last_time = (value, converted)
        return converted


def _unchanged(value: datetime) -> datetime:
    return value


# == writer leases, the recovery sweep, storable text (issue 7) =================================


@dataclass(frozen=True, slots=True)
class WriterInfo:
    """Who holds a lease: a random id, and the process and host, for people reading the table."""

    id: str
    pid: int
    host: str


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one recovery sweep changed: rewritten and inserted messages, corrupt candidates
    left for a later sweep, rows released (``writer_id`` set NULL), ended leases removed."""

    updated: tuple[Message, ...]
    created: tuple[Message, ...]
    corrupt: tuple[str, ...]
    released: int
    writers_removed: int


# (candidates, answered tool-call ids per session, database now) -> (to rewrite, to insert)
Decide = Callable[
    [list[Message], dict[str, set[str]], datetime], tuple[list[Message], list[Message]]
]


async def _database_now(conn: AsyncConnection) -> datetime:
    if conn.dialect.name == "postgresql":
        value: datetime = (await conn.execute(select(func.now()))).scalar_one()
        return value
    return utc_now()


def _writer_has_rows() -> Any:
    """True for a ``writers`` row whose id some message still carries (uses the index)."""
    return select(messages.c.seq).where(messages.c.writer_id == writers.c.id).exists()


def _has_tag(tag: str) -> Any:
    """True for parts JSON holding a part of type ``tag``.

    ``encode_parts`` escapes every quote inside a string value, so the quoted tag can only
    appear as a part's type (no data key is spelled like a tag); a hand-written row may give a
    false match, which only costs a decode.
    """
    return messages.c.parts.contains(f'"{tag}"', autoescape=True)


def storable(value: object) -> bool:
    """True if ``value`` is text every backend stores as is: no NUL, no lone surrogate.

    (PostgreSQL cannot store NUL in text; neither driver encodes a lone surrogate.) Ids the
    store generates are always storable, so an id that is not cannot name a row.
    """
    if not isinstance(value, str):
        return False
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def check_storable(message_id: str, name: str, value: str) -> None:
    """Raise ``InvalidMessage`` if a column-stored field of a message cannot be stored."""
    if not storable(value):
        raise InvalidMessage(
            f"message {message_id!r}: {name} contains a NUL character or a lone surrogate, "
            "which the database cannot store (only parts may hold arbitrary text)"
        )


def _check_session_text(title: str, parent_session_id: str | None) -> None:
    if not storable(title):
        raise InvalidMessage(
            "session title contains a NUL character or a lone surrogate, which the database "
            "cannot store"
        )
    if parent_session_id is not None and not storable(parent_session_id):
        raise InvalidMessage(
            "parent_session_id contains a NUL character or a lone surrogate, which the "
            "database cannot store"
        )
