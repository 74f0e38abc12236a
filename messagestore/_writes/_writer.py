"""The debounced write path: the buffer, the flusher and the database, put together.

The Writer is the only door to the buffer. ``accept`` buffers a validated copy; a terminal
change (or any, when debouncing is off) is then written by the caller with ``write_now``. A
write takes the pending snapshots of some entries as one batch, one database job (the group
commit); its commit hook, on the loop in commit order, records what became durable and hands
the states to the change feed. A failed write puts its snapshots back and backs off; a row the
database refuses is written around. The flusher never waits for subscribers; a terminal
``update()`` waits (bounded) for them. The story: docs/ARCHITECTURE.md, "The life of one
update()".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from pubsub import EventType

from .._changes import Change, Kind
from .._database._database import Job, Revisions
from .._database._repository import Repository, WriteResult
from .._errors import MessageNotFound, StoreClosed, WriteFailed
from .._model import Message
from .._receivers import send
from .._supervisor import Supervisor
from ._buffer import Batch, Buffer, Entry
from ._deletes import RunDelete, delete
from ._flusher import Flusher
from ._missing import Missing
from ._signals import batch_written, write_failed

__all__ = ["Announce", "RunDelete", "WriteStats", "Writer", "WriterCounters"]

_log = logging.getLogger("messagestore")

Announce = Callable[[Sequence[Change], Revisions], "asyncio.Future[None] | None"]
"""The change feed's intake: publishes in commit order, returns the wait for slow readers."""


@dataclass(slots=True)
class WriterCounters:
    """Running totals; ``MessageService.stats()`` snapshots them."""

    transactions: int = 0
    rows: int = 0
    bytes: int = 0
    write_failures: int = 0
    terminal_writes: int = 0


@dataclass(frozen=True, slots=True)
class WriteStats:
    """A snapshot of the write path's counters (``Writer.stats``)."""

    updates_accepted: int
    deltas_coalesced: int
    transactions: int
    rows_written: int
    bytes_written: int
    write_failures: int
    terminal_writes: int
    pending_messages: int
    buffered_messages: int


class _Write:
    """One submitted batch: its commit future, and the wait for slow subscribers after it."""

    __slots__ = ("batch", "commit", "delivered", "terminal")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.commit: asyncio.Future[WriteResult] | None = None
        self.delivered: asyncio.Future[None] | None = None
        self.terminal = False


class Writer:
    """Buffers accepted states and writes them; owned by one ``MessageService``."""

    def __init__(
        self,
        repository: Repository,
        announce: Announce,
        *,
        supervisor: Supervisor,
        listening: Callable[[], bool] = lambda: True,
        debounce: float,
        idle_release: float = 30.0,
        sender: object = None,
    ) -> None:
        self._repository = repository
        self._announce = announce
        self._listening = listening
        self._sender = self if sender is None else sender
        self._buffer = Buffer(idle_release=idle_release)
        self.counters = WriterCounters()
        self._writes: set[_Write] = set()
        self._missing = Missing()
        self._closed = False
        self._flusher: Flusher | None = None
        if debounce > 0:
            self._flusher = Flusher(debounce, self._tick)
            self._flusher.start(supervisor)

    @property
    def flusher_task(self) -> asyncio.Task[None] | None:
        return None if self._flusher is None else self._flusher.task

    @property
    def appends(self) -> bool:
        """True (the default) to store streamed text as appends (``_database._appends``);
        False writes every change whole, as before appends existed (benchmarks compare)."""
        return self._buffer.appends

    @appends.setter
    def appends(self, value: bool) -> None:
        self._buffer.appends = value

    # -- accepting ---------------------------------------------------------------------------

    def last_accepted(self, message_id: str) -> Message | None:
        return self._buffer.last_accepted(message_id)

    def track_created(self, message: Message) -> None:
        """Remember a just-created message as written (terminal judgement, appends).

        Without debouncing nothing is kept past the create (every update writes, and is then
        released); with it, a tick is armed to release the entry once idle, so a message that
        is created and never updated (most user messages) is not held for good.
        """
        entry = self._buffer.track_created(message)
        flusher = self._flusher
        if flusher is None:
            self._buffer.release_clean(entry)
        else:
            flusher.arm_in(self._buffer.idle_release)

    def accept(self, copy: Message, *, streaming_only: bool = False) -> bool:
        """Buffer ``copy``; True if the caller must ``await write_now(copy.id)`` now."""
        entry, terminal = self._buffer.accept(copy, streaming_only=streaming_only)
        flusher = self._flusher
        if flusher is None:
            return True
        if entry.written.in_flight is None:  # else the write's commit hook arms the next tick
            flusher.arm_in(flusher.debounce)
        return terminal

    # -- writing -----------------------------------------------------------------------------

    def _submit(self, entries: Iterable[Entry], also: Job[object] | None = None) -> _Write | None:
        batch = self._buffer.take(entries)
        if not batch.states:
            return None
        write = _Write(batch)
        self._writes.add(write)
        commit = self._repository.write_messages(
            batch.items,
            partial(self._committed, write),
            verify=frozenset(batch.verify),
            also=also,
        )
        write.commit = commit
        if commit.done():  # settle at once: the caller must see the snapshots put back
            self._settled(write, commit)
        else:
            commit.add_done_callback(partial(self._settled, write))
        return write

    def _committed(
        self,
        write: _Write,
        result: WriteResult,
        taken: Revisions,
        recorded: Sequence[Change] = (),
    ) -> None:
        """The commit hook: on the event loop, in commit order, before anyone resumes.
        ``recorded``: what a job run in the same transaction recorded (``write_with``),
        announced after the batch's states."""
        settled = self._buffer.committed(write.batch, result)
        counters = self.counters
        counters.transactions += 1
        counters.rows += result.rows
        counters.bytes += result.bytes
        terminal = sum(1 for _, is_terminal in settled.announced if is_terminal)
        counters.terminal_writes += terminal
        write.terminal = terminal > 0
        # Copies (one per event, shared by its subscribers) only if anyone listens: with no
        # subscriber a tick of 1,000 streams would clone 1,000 messages for nobody.
        changes = (
            [
                Change(Kind.MESSAGE, EventType.UPDATED, state.clone(), is_terminal)
                for state, is_terminal in settled.announced
            ]
            if self._listening()
            else []
        )
        if recorded:
            changes.extend(recorded)
        write.delivered = self._announce(changes, taken)
        self._missing.found(settled.missing)
        if settled.refused:
            self._refused(settled.refused)
        elif self._flusher is not None:
            self._flusher.succeed()
        if batch_written.receivers:
            send(
                batch_written,
                self._sender,
                rows=result.rows,
                bytes=result.bytes,
                seconds=time.monotonic() - write.batch.started,
                staleness=settled.staleness,
                terminal=write.terminal,
            )
        self._arm_for_leftovers()

    def _settled(self, write: _Write, commit: asyncio.Future[WriteResult]) -> None:
        """Done callback of every write: after a failure, put the snapshots back and back off."""
        self._writes.discard(write)
        error = commit.exception()
        if error is None:
            return
        self._buffer.restore(write.batch)
        self.counters.write_failures += 1
        retry_in = self._flusher.fail() if self._flusher is not None else 0.0
        if write_failed.receivers and isinstance(error, Exception):
            ids = [e.id for e in write.batch.entries]
            send(write_failed, self._sender, error=error, message_ids=ids, retry_in=retry_in)

    def _refused(self, refused: dict[str, Exception]) -> None:
        """Rows the database refused while the rest of their batch committed.

        The database is fine, so the flusher does not back off: each refused state waits for
        its own retry time (exponential, like the flusher's backoff) while the other messages
        keep their pace.
        """
        self.counters.write_failures += 1
        retry_in = 0.0
        now = time.monotonic()
        for message_id, error in refused.items():
            _log.warning("messagestore: the database refused message %s: %r", message_id, error)
            entry = self._buffer.entries.get(message_id)
            if entry is not None and self._flusher is not None:
                refusal = entry.refusal
                refusal.refusals += 1
                retry_in = self._flusher.backoff(refusal.refusals)
                refusal.retry_at = now + retry_in
        if self._flusher is not None:
            self._flusher.succeed()
        if write_failed.receivers:
            first = next(iter(refused.values()))
            send(
                write_failed,
                self._sender,
                error=first,
                message_ids=list(refused),
                retry_in=retry_in,
            )

    def _arm_for_leftovers(self) -> None:
        flusher = self._flusher
        if flusher is None:
            return
        if self._buffer.ready(time.monotonic()):
            flusher.arm_in(flusher.debounce)
        else:
            self._arm_for_retries()

    def _arm_for_retries(self) -> None:
        """Make sure a tick comes when the earliest refused state may be tried again."""
        retry = self._buffer.next_retry()
        if retry is not None and self._flusher is not None:
            self._flusher.arm(max(retry, time.monotonic() + self._flusher.debounce))

    async def _run(self, entries: Iterable[Entry], *, deliver: bool) -> None:
        """Write the entries now and wait for the commit (and, with ``deliver``, for terminal
        states to reach slow subscribers). Raises ``WriteFailed``."""
        write = self._submit(entries)
        if write is not None:
            await self._wait(write, deliver=deliver)

    async def _wait(self, write: _Write, *, deliver: bool) -> None:
        assert write.commit is not None
        try:
            await asyncio.shield(write.commit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise WriteFailed(
                f"write of {len(write.batch.states)} message(s) failed: {exc!r}"
            ) from exc
        if deliver and write.terminal and write.delivered is not None:
            await asyncio.shield(write.delivered)

    async def write_now(self, message_id: str) -> None:
        """Write the id's pending state now (behind any write of it in flight) and wait for it
        to commit and, if terminal, to reach subscribers.

        Raises ``WriteFailed`` (the state stays buffered), or ``MessageNotFound`` when the
        write found the row gone (another process deleted it): nothing was stored; and
        ``BackgroundTaskFailed`` (the state stays buffered) once a background loop died.
        """
        self._repository.check_writable()
        entry = self._buffer.entries.get(message_id)
        if entry is None:
            return
        target = entry.accepted.count
        if entry.accepted.pending is not None:
            await self._run([entry], deliver=True)
        elif entry.written.in_flight is not None:
            await self._wait_in_flight(entry)
        if entry.vanished:
            self._missing.reported(message_id)
            raise MessageNotFound(message_id)
        self._raise_refused(entry, target)
        if self._flusher is None:
            self._buffer.release_clean(entry)

    async def write_with(self, message_ids: Sequence[str], also: Job[object]) -> None:
        """Write the ids' pending states now in ONE transaction that also runs ``also(tx)``
        after them, and wait for it to commit and for terminal states to reach subscribers
        (bounded), as ``write_now`` does; with nothing to write, ``also`` runs alone.

        Raises ``WriteFailed`` if the transaction failed (nothing of it committed; the states
        stay buffered and ``also``'s error is the cause), and after the commit, like
        ``write_now``, ``MessageNotFound`` for a row found gone or ``WriteFailed`` for a
        state the database refused (the rest, ``also`` included, committed).
        """
        self._repository.check_writable()
        entries = self._buffer.entries
        targets = [(e, e.accepted.count) for i in message_ids if (e := entries.get(i)) is not None]
        write = self._submit([e for e, _ in targets], also)
        if write is None:
            await self._repository.transaction(also, write=True)
        else:
            await self._wait(write, deliver=True)
        for entry, target in targets:
            if entry.vanished:
                self._missing.reported(entry.id)
                raise MessageNotFound(entry.id)
            self._raise_refused(entry, target)
            if self._flusher is None:
                self._buffer.release_clean(entry)

    async def _wait_in_flight(self, entry: Entry) -> None:
        batch = entry.written.in_flight
        write = next((w for w in self._writes if w.batch is batch), None)
        if write is not None:
            await self._wait(write, deliver=True)

    def _raise_refused(self, entry: Entry, target: int) -> None:
        error = entry.refusal.error
        if error is not None and entry.written.durable < target:
            raise WriteFailed(f"the database refused message {entry.id!r}: {error!r}") from error

    async def flush(self, message_id: str) -> None:
        """Return once every change to ``message_id`` accepted before the call is durable."""
        self._check_open()
        self._missing.raise_for(message_id)
        entry = self._buffer.entries.get(message_id)
        if entry is not None:
            target = entry.accepted.count
            tried = False  # a state the database refused before is tried once more
            while entry.written.durable < target and not entry.deleting:
                if entry.refusal.error is not None and tried:
                    self._raise_refused(entry, target)
                tried = True
                if entry.accepted.pending is not None:
                    await self._run([entry], deliver=False)
                elif entry.written.in_flight is not None:
                    await self._wait_in_flight(entry)
                else:
                    break
        self._missing.raise_for(message_id)

    async def flush_all(self) -> None:
        """Return once every change accepted before the call, for every id, is durable.

        Raises ``WriteFailed`` if a write fails, and ``MessageNotFound`` naming every id whose
        row was found deleted by another process.
        """
        self._check_open()
        await self._drain()
        self._missing.raise_all()

    async def _drain(self) -> None:
        targets = {
            e: e.accepted.count
            for e in self._buffer.entries.values()
            if e.written.durable < e.accepted.count
        }
        tried: set[Entry] = set()  # a state the database refused before is tried once more
        while targets:
            targets = {e: t for e, t in targets.items() if e.written.durable < t and not e.deleting}
            for entry, target in targets.items():
                refused = entry.refusal.error is not None
                if refused and entry.accepted.pending is not None and entry in tried:
                    self._raise_refused(entry, target)
            ready = [e for e in targets if e.accepted.pending is not None]
            if ready:
                tried.update(ready)
                await self._run(ready, deliver=False)
                continue
            in_flight = [w.commit for w in self._writes if w.commit is not None]
            if not in_flight or not any(e.written.in_flight is not None for e in targets):
                break
            tried.update(e for e in targets if e.written.in_flight is not None)
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)

    # -- deleting ----------------------------------------------------------------------------

    async def delete_message(self, message_id: str, run: RunDelete) -> list[Change]:
        """Run the delete job of one message under the write path's rules (``_deletes``);
        refused before the buffer is touched once a background loop died."""
        self._repository.check_writable()
        return await delete(self._buffer, lambda entry: entry.id == message_id, run)

    async def delete_session(self, session_id: str, run: RunDelete) -> list[Change]:
        """Run a delete job that removes every message of the session (and perhaps the
        session itself) under the write path's rules; refused like ``delete_message``."""
        self._repository.check_writable()
        return await delete(
            self._buffer, lambda entry: entry.identity.session_id == session_id, run
        )

    # -- ticks -------------------------------------------------------------------------------

    async def _tick(self) -> None:
        flusher = self._flusher
        assert flusher is not None
        if self._closed:  # closing wrote everything; the supervisor stops the loop
            return
        started = time.monotonic()
        ready = self._buffer.ready(started)
        if ready:
            with contextlib.suppress(WriteFailed):  # counted, signalled, backed off: _settled
                await self._run(ready, deliver=False)
        now = time.monotonic()
        self._buffer.release_idle(now)
        if self._buffer.ready(now):
            flusher.arm(started + flusher.debounce)
        elif self._buffer.next_retry() is not None:
            self._arm_for_retries()
        elif not self._buffer.dirty and self._buffer.entries:
            flusher.arm_in(self._buffer.idle_release)

    # -- what it holds ----------------------------------------------------------------------

    def unwritten_ids(self) -> frozenset[str]:
        """The ids with a change pending or in flight: rows this store is still writing."""
        return self._buffer.unwritten_ids()

    def stats(self) -> WriteStats:
        """A snapshot of the counters; safe to call from another thread (a metrics reader)."""
        buffer, counters = self._buffer, self.counters
        return WriteStats(
            updates_accepted=buffer.updates,
            deltas_coalesced=buffer.coalesced,
            transactions=counters.transactions,
            rows_written=counters.rows,
            bytes_written=counters.bytes,
            write_failures=counters.write_failures,
            terminal_writes=counters.terminal_writes,
            pending_messages=buffer.pending_count,
            buffered_messages=buffer.entry_count,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        """Refuse a flush once closed, or once a background loop died (see
        ``Repository.check_writable``)."""
        if self._closed:
            raise StoreClosed("message service")
        self._repository.check_writable()

    async def close(self) -> None:
        """Write everything, then disarm the flusher (the store's supervisor stops its loop).
        Idempotent. Raises a final write failure; rows deleted elsewhere are logged, not
        raised (closing always closes)."""
        if self._closed:
            return
        try:
            await self._drain()
        finally:
            self._closed = True
            if self._flusher is not None:
                self._flusher.disarm()
            pending = [w.commit for w in self._writes if w.commit is not None]
            if pending:  # writes whose caller was cancelled: let them end, never cut them
                await asyncio.wait(pending)
            self._missing.log_all()
