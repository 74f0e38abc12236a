"""The services' one door to the database: each method submits one job (see ``_database``).

Every job that changes messages or sessions returns its changes; the repository hands them,
with the revisions the job took, to ``announce`` — on the event loop, in commit order, once
per commit, whether or not the caller is still waiting. That is the single ordering point of
every event the store publishes (the change feed, ``_feed``). The SQL lives in the ``*_jobs``
modules; this module holds none.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from .._changes import Change, Kind
from .._errors import BackgroundTaskFailed, MessageNotFound, SessionNotFound
from .._model import Message, Role, Session
from . import _group_commit as group_commit
from . import _lease_jobs as leases
from . import _message_jobs as message_jobs
from . import _recorded as recorded
from . import _revisions as revisions
from . import _session_jobs as session_jobs
from ._database import Database, OnCommit, Revisions
from ._group_commit import WriteItem, WriteResult
from ._lease_jobs import WriterInfo
from ._revisions import ChangePage
from ._rows import check_session_text, storable
from ._schema import messages
from ._sweep_job import Decide, SweepResult, sweep_abandoned

__all__ = ["Announce", "Repository", "Snapshot", "WriteItem", "WriteResult", "WriterInfo"]

T = TypeVar("T")

Announce = Callable[[Sequence[Change], Revisions], object]
"""Receives every commit's changes, in commit order, on the event loop."""
Hook = Callable[[list[Change]], None] | None
ErrorHook = Callable[[BaseException], None] | None


class Snapshot:
    """Messages read together with the revision they are consistent at (list, then watch)."""

    __slots__ = ("messages", "revision")

    def __init__(self, messages: list[Message], revision: int) -> None:
        self.messages = messages
        self.revision = revision

    def __repr__(self) -> str:
        return f"Snapshot(messages=<{len(self.messages)}>, revision={self.revision})"


class Repository:
    """Sessions and messages in one database, one job per call."""

    def __init__(self, database: Database, announce: Announce | None = None) -> None:
        self.database = database
        self._announce = announce
        # Recorded in ``messages.writer_id`` by every insert and write (the store's lease id),
        # and sent with every commit's NOTIFY so the store can tell its own commits apart.
        self.writer_id: str | None = None
        self.source = "-"
        # Raises ``BackgroundTaskFailed`` once a background loop the writes rely on died (the
        # store's ``Supervisor.check``); asked where a write a caller waits for begins.
        self.check_writable: Callable[[], None] = _writable

    def set_announce(self, announce: Announce) -> None:
        self._announce = announce

    # -- plumbing --------------------------------------------------------------------------------

    def _on_commit(self, changes: Sequence[Change], taken: Revisions) -> object:
        if self._announce is None:
            return None
        # Events carry copies: the caller keeps its objects. One copy per event is shared by
        # every subscriber of it, so subscribers treat payloads as read-only (clone to change).
        return self._announce([_owned(c) for c in changes], taken)

    async def _change(
        self,
        job: Callable[..., list[Change]],
        then: Callable[[list[Change]], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> list[Change]:
        """Run a job that returns changes; announce them on commit; return once they are
        committed and announced (a slow subscriber is waited for, bounded, as the broker's
        must-deliver path does).

        ``then`` runs in the commit hook (before the announcement), ``failed`` when the job
        fails: both also when the caller was cancelled meanwhile.
        """
        announced: list[object] = []

        def on_commit(changes: list[Change], taken: Revisions) -> None:
            if then is not None:
                then(changes)
            announced.append(self._on_commit(changes, taken))

        future = self._submit_checked(job, on_commit)
        if failed is not None:

            def on_done(done: asyncio.Future[list[Change]]) -> None:
                error = None if done.cancelled() else done.exception()
                if error is not None:
                    failed(error)

            future.add_done_callback(on_done)
        changes = await asyncio.shield(future)
        delivery = announced[0] if announced else None
        if isinstance(delivery, asyncio.Future):
            await asyncio.shield(delivery)
        return changes

    def _submit_checked(
        self, job: Callable[[Connection], T], on_commit: OnCommit[T]
    ) -> asyncio.Future[T]:
        """Submit a write a caller waits for; once a background loop died it is refused: the
        future returned has already failed with ``BackgroundTaskFailed`` (so the caller's
        ``failed`` hooks run as for any failed write)."""
        try:
            self.check_writable()
        except BackgroundTaskFailed as refused:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            future.set_exception(refused)
            return future
        return self.database.submit_write(job, on_commit)

    async def _read(self, job: Callable[..., T]) -> T:
        return await self.database.read(job)

    def submit_transaction(self, job: Callable[[Connection], T]) -> asyncio.Future[T]:
        """Queue a write job of another capability (the dispatcher) as one transaction.

        It locks the revision counter first, as every job that may change messages does (so
        it can never deadlock with one), and the changes it records (``_recorded``) are
        announced on commit, in commit order. The returned future is never cancelled by a
        caller that stops waiting; the job commits or rolls back whatever happens. Refused
        (the future fails with ``BackgroundTaskFailed``) once a background loop died.
        """
        source = self.source

        def run(conn: Connection) -> tuple[T, list[Change]]:
            recorded.begin_recording(conn, source)
            revisions.lock_counter(conn, source)
            try:
                return job(conn), recorded.take_recorded(conn)
            finally:
                recorded.take_recorded(conn)

        def on_commit(outcome: tuple[T, list[Change]], taken: Revisions) -> None:
            if outcome[1]:
                self._on_commit(outcome[1], taken)

        future = self._submit_checked(run, on_commit)
        result: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def unpack(done: asyncio.Future[tuple[T, list[Change]]]) -> None:
            if result.cancelled():
                if not done.cancelled():
                    done.exception()
                return
            error = done.exception()
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(done.result()[0])

        future.add_done_callback(unpack)
        return result

    # -- sessions --------------------------------------------------------------------------------

    async def create_session(self, session: Session) -> Session:
        check_session_text(session.title, session.parent_session_id)
        await self._change(
            partial(session_jobs.create_session, session=session, source=self.source)
        )
        return session

    async def get_session(self, session_id: str) -> Session:
        if not storable(session_id):
            raise SessionNotFound(session_id)
        return await self._read(partial(session_jobs.get_session, session_id=session_id))

    async def list_sessions(self) -> list[Session]:
        return await self._read(session_jobs.list_sessions)

    async def save_session(self, session: Session) -> Session:
        check_session_text(session.title, session.parent_session_id)
        if not storable(session.id):
            raise SessionNotFound(session.id)
        changes = await self._change(
            partial(session_jobs.save_session, session=session, source=self.source)
        )
        saved = changes[0].payload
        assert isinstance(saved, Session)
        return saved

    async def delete_session(
        self, session_id: str, then: Hook = None, failed: ErrorHook = None
    ) -> list[Change]:
        """Delete the session and its messages; return the changes (messages, then session)."""
        if not storable(session_id):
            raise SessionNotFound(session_id)
        return await self._change(
            partial(session_jobs.delete_session, session_id=session_id, source=self.source),
            then,
            failed,
        )

    # -- messages --------------------------------------------------------------------------------

    async def create_message(
        self, message: Message, then: Callable[[list[Change]], None] | None = None
    ) -> None:
        """Insert ``message`` (id and timestamps set; its ``revision`` is set on commit)."""
        if not storable(message.session_id):
            raise SessionNotFound(message.session_id)
        await self._change(
            partial(
                message_jobs.insert_message,
                message=message,
                writer_id=self.writer_id,
                source=self.source,
            ),
            then,
        )

    def write_messages(
        self,
        items: Sequence[WriteItem],
        on_commit: OnCommit[WriteResult],
        *,
        verify: frozenset[str] = frozenset(),
    ) -> asyncio.Future[WriteResult]:
        """Queue the group commit of ``items``; ``on_commit`` announces it (see ``_writes``).

        ``verify``: ids whose lifelong fields the job checks against their rows first."""
        job = partial(
            group_commit.write_messages,
            items=items,
            writer_id=self.writer_id,
            source=self.source,
            verify=verify,
        )
        return self.database.submit_write(job, on_commit)

    async def get_message(self, message_id: str) -> Message:
        if not storable(message_id):
            raise MessageNotFound(message_id)
        return await self._read(partial(message_jobs.get_message, message_id=message_id))

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
        return await self._read(lambda conn: message_jobs.list_messages(conn, *where))

    async def delete_message(
        self, message_id: str, then: Hook = None, failed: ErrorHook = None
    ) -> list[Change]:
        """Delete one message; return the changes (the message, then its session's count)."""
        if not storable(message_id):
            raise MessageNotFound(message_id)
        return await self._change(
            partial(message_jobs.delete_message, message_id=message_id, source=self.source),
            then,
            failed,
        )

    async def delete_session_messages(
        self, session_id: str, then: Hook = None, failed: ErrorHook = None
    ) -> list[Change]:
        if not storable(session_id):
            return []
        return await self._change(
            partial(
                message_jobs.delete_session_messages, session_id=session_id, source=self.source
            ),
            then,
            failed,
        )

    # -- the change feed ---------------------------------------------------------------------------

    async def read_changes(
        self,
        after: int,
        *,
        upto: int | None,
        limit: int,
        session_id: str | None = None,
        kinds: frozenset[Kind] = frozenset(Kind),
    ) -> ChangePage:
        return await self._read(
            partial(
                revisions.read_changes,
                after=after,
                upto=upto,
                limit=limit,
                session_id=session_id,
                kinds=kinds,
            )
        )

    async def read_counter(self) -> tuple[int, int]:
        """(newest revision, compacted revision)."""
        return await self._read(revisions.read_counter)

    async def snapshot(self, session_id: str | None) -> Snapshot:
        """The messages (of one session, or all) and the revision they are consistent at."""
        if session_id is not None and not storable(session_id):
            return Snapshot([], (await self.read_counter())[0])
        where = () if session_id is None else (messages.c.session_id == session_id,)
        return await self._read(partial(_snapshot, where=where))

    async def prune_tombstones(self, before: datetime) -> int:
        return await self.database.write(
            partial(revisions.prune_tombstones, before=before, source=self.source)
        )

    # -- writer leases and the recovery sweep ------------------------------------------------------

    async def register_writer(self, writer: WriterInfo, ttl: float) -> datetime:
        return await self.database.write(partial(leases.register_writer, writer=writer, ttl=ttl))

    async def renew_writer(self, writer: WriterInfo, ttl: float) -> leases.Renewal:
        return await self.database.write(partial(leases.renew_writer, writer=writer, ttl=ttl))

    async def ended_writers(self, own_writer_id: str) -> tuple[str, ...]:
        """The writers other than ``own_writer_id`` whose lease ended and was not swept."""
        return await self._read(partial(leases.ended_writers, own_writer_id=own_writer_id))

    async def retire_writer(self, writer_id: str) -> None:
        await self.database.write(partial(leases.retire_writer, writer_id=writer_id))

    async def sweep_abandoned(
        self, own_writer_id: str, keep: frozenset[str], decide: Decide
    ) -> SweepResult:
        job = partial(
            sweep_abandoned,
            own_writer_id=own_writer_id,
            keep=keep,
            decide=decide,
            source=self.source,
        )
        return await self.database.write(job, self._on_sweep)

    def _on_sweep(self, result: SweepResult, taken: Revisions) -> None:
        self._on_commit(result.changes, taken)  # recovery waits for nobody


def _writable() -> None:
    """``check_writable`` of a repository no supervisor watches: always writable."""


def _owned(change: Change) -> Change:
    payload = change.payload
    copy = payload.clone() if isinstance(payload, Message) else dataclasses.replace(payload)
    return dataclasses.replace(change, payload=copy)


def _snapshot(conn: Any, where: tuple[Any, ...]) -> Snapshot:
    newest, _ = revisions.read_counter(conn)
    return Snapshot(message_jobs.list_messages(conn, *where), newest)
