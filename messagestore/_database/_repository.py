"""The services' one door to the database: each method submits one job (see ``_database``).

Every job that changes messages or sessions records its changes on its ``Tx``; the repository
hands them, with the revisions the job took, to ``announce`` — on the event loop, in commit
order, once per commit, whether or not the caller is still waiting. That is the single
ordering point of every event the store publishes (the change feed, ``_feed``), also for the
jobs of other capabilities (``transaction``: the dispatcher). The SQL lives in the ``*_jobs``
modules; this module holds none.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from .._changes import Change, Kind
from .._errors import BackgroundTaskFailed, MessageNotFound, SessionNotFound
from .._model import Message, Role, Session
from .._validation import check_session_text, storable
from . import _group_commit as group_commit
from . import _lease_jobs as leases
from . import _message_jobs as message_jobs
from . import _revisions as revisions
from . import _session_jobs as session_jobs
from ._database import Database, Job, OnCommit, Revisions
from ._group_commit import WriteItem, WriteResult
from ._lease_jobs import WriterInfo
from ._read_states import ReadStates
from ._revisions import ChangePage
from ._schema import messages
from ._sweep_job import Decide, SweepResult, sweep_abandoned
from ._tx import Tx

__all__ = ["Announce", "Repository", "Snapshot", "WriteItem", "WriteResult", "WriterInfo"]

T = TypeVar("T")

Announce = Callable[[Sequence[Change], Revisions], object]
"""Receives every commit's changes, in commit order, on the event loop."""
Hook = Callable[[list[Change]], None] | None
ErrorHook = Callable[[BaseException], None] | None
WriteHook = Callable[[WriteResult, Revisions, Sequence[Change]], None]
"""The group commit's hook: the batch's result, the revisions it took, and the changes a job
run with it recorded (``write_messages(also=...)``)."""


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
        job: Job[None],
        then: Callable[[list[Change]], None] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> list[Change]:
        """Run a job that records changes; announce them on commit; return them once they
        are committed and announced (a slow subscriber is waited for, bounded, as the
        broker's must-deliver path does).

        ``then`` runs in the commit hook (before the announcement), ``failed`` when the job
        fails: both also when the caller was cancelled meanwhile.
        """
        committed: list[list[Change]] = []
        announced: list[object] = []

        def on_commit(_: None, taken: Revisions, recorded: Sequence[Change]) -> None:
            changes = list(recorded)
            committed.append(changes)
            if then is not None:
                then(changes)
            announced.append(self._on_commit(changes, taken))

        future = self._submit_checked(job, on_commit)
        if failed is not None:

            def on_done(done: asyncio.Future[None]) -> None:
                error = None if done.cancelled() else done.exception()
                if error is not None:
                    failed(error)

            future.add_done_callback(on_done)
        await asyncio.shield(future)
        delivery = announced[0] if announced else None
        if isinstance(delivery, asyncio.Future):
            await asyncio.shield(delivery)
        return committed[0]

    def _submit_checked(self, job: Job[T], on_commit: OnCommit[T]) -> asyncio.Future[T]:
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

    async def _read(self, job: Job[T]) -> T:
        return await self.database.read(job)

    # -- transactions of other capabilities --------------------------------------------------------

    async def transaction(self, job: Job[T], *, write: bool) -> T:
        """Run ``job`` as one transaction: a write in the store's write order, or (``write``
        False) a read-only snapshot; return its result.

        A write locks the revision counter first, as every job that may change messages does
        (so it can never deadlock with one); the changes it records (``Tx.record``, e.g.
        ``create_message_in``) are announced on commit, in commit order, without waiting for
        slow subscribers. A caller that is cancelled only stops waiting: the job commits or
        rolls back as a whole. A write is refused (``BackgroundTaskFailed``) once a
        background loop died.
        """
        if not write:
            return await self.database.read(job)

        def run(tx: Tx) -> T:
            tx.lock_counter()
            return job(tx)

        return await asyncio.shield(self._submit_checked(run, self._on_transaction_commit))

    def _on_transaction_commit(
        self, _: object, taken: Revisions, recorded: Sequence[Change]
    ) -> None:
        if recorded or taken is not None:
            self._on_commit(recorded, taken)  # waits for nobody

    def create_message_in(self, tx: Tx, message: Message) -> None:
        """Insert ``message`` inside the running transaction ``tx``, exactly as
        ``create_message`` does (its revision is set; the changes are recorded on ``tx``)."""
        if not storable(message.session_id):
            raise SessionNotFound(message.session_id)
        message_jobs.insert_message(tx, message)

    # -- sessions --------------------------------------------------------------------------------

    async def create_session(self, session: Session, *, chosen_id: bool = False) -> Session:
        check_session_text(session.title, session.parent_session_id)
        await self._change(
            partial(session_jobs.create_session, session=session, chosen_id=chosen_id)
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
        changes = await self._change(partial(session_jobs.save_session, session=session))
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
            partial(session_jobs.delete_session, session_id=session_id),
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
        await self._change(partial(message_jobs.insert_message, message=message), then)

    def write_messages(
        self,
        items: Sequence[WriteItem],
        on_commit: WriteHook,
        *,
        verify: frozenset[str] = frozenset(),
        also: Job[object] | None = None,
    ) -> asyncio.Future[WriteResult]:
        """Queue the group commit of ``items``; ``on_commit`` announces it (see ``_writes``).

        ``verify``: ids whose lifelong fields the job checks against their rows first.
        ``also``: a job of another capability run in the same transaction after the batch
        (``MessageService.update_with``): it commits or rolls back with it; the changes it
        records are handed to ``on_commit`` (copies, after the batch's) to be announced with
        the batch's."""
        job: Job[WriteResult] = partial(group_commit.write_messages, items=items, verify=verify)
        if also is not None:
            job = partial(_write_then, job, also)

        def committed(result: WriteResult, taken: Revisions, recorded: Sequence[Change]) -> None:
            # The writer builds the batch's changes from the result; ``also``'s are copied.
            on_commit(result, taken, [_owned(c) for c in recorded])

        return self.database.submit_write(job, committed)

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
        return await self._read(lambda tx: message_jobs.list_messages(tx, *where))

    async def delete_message(
        self, message_id: str, then: Hook = None, failed: ErrorHook = None
    ) -> list[Change]:
        """Delete one message; return the changes (the message, then its session's count)."""
        if not storable(message_id):
            raise MessageNotFound(message_id)
        return await self._change(
            partial(message_jobs.delete_message, message_id=message_id),
            then,
            failed,
        )

    async def delete_session_messages(
        self, session_id: str, then: Hook = None, failed: ErrorHook = None
    ) -> list[Change]:
        if not storable(session_id):
            return []
        return await self._change(
            partial(message_jobs.delete_session_messages, session_id=session_id),
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
        states: ReadStates | None = None,
    ) -> ChangePage:
        """See ``_revisions.read_changes``; ``states`` is the change feed's (one read at a
        time uses it; it is updated here, on the loop, once the read is done)."""
        page = await self._read(
            partial(
                revisions.read_changes,
                after=after,
                upto=upto,
                limit=limit,
                session_id=session_id,
                kinds=kinds,
                states=states,
            )
        )
        return page.settled()

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
        return await self.database.write(partial(revisions.prune_tombstones, before=before))

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
        job = partial(sweep_abandoned, own_writer_id=own_writer_id, keep=keep, decide=decide)
        return await self.database.write(job, self._on_sweep)

    def _on_sweep(self, _: SweepResult, taken: Revisions, changes: Sequence[Change]) -> None:
        self._on_commit(changes, taken)  # recovery waits for nobody


def _write_then(write: Job[WriteResult], also: Job[object], tx: Tx) -> WriteResult:
    """A group commit and another job in one transaction: the batch first (it takes its
    revisions, the first lock of every job that changes messages), then ``also``."""
    result = write(tx)
    if tx.revisions is None:
        tx.lock_counter()  # nothing written: the counter is still locked first
    also(tx)
    return result


def _writable() -> None:
    """``check_writable`` of a repository no supervisor watches: always writable."""


def _owned(change: Change) -> Change:
    payload = change.payload
    copy = payload.clone() if isinstance(payload, Message) else dataclasses.replace(payload)
    return dataclasses.replace(change, payload=copy)


def _snapshot(tx: Tx, where: tuple[Any, ...]) -> Snapshot:
    newest, _ = revisions.read_counter(tx)
    return Snapshot(message_jobs.list_messages(tx, *where), newest)
