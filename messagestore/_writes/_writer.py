"""The debounced write path: per-message buffer, one flusher, group commit.

State per message id lives in an ``_Entry``. ``accept`` stores a private copy as the entry's
``pending`` state and bumps ``accepted``; a write moves the snapshot it took into ``written``
and raises ``durable`` to the ``accepted`` count it saw. ``flush`` waits for ``durable`` to
reach the ``accepted`` count at the time of the call.

Ticks. The first change buffered while nothing is dirty arms a tick ``debounce`` later; at a tick
the flusher writes every dirty entry that is not busy in ONE transaction (group commit), then
arms the next tick ``debounce`` after the previous one if anything is dirty again (changes that
arrived during the write included, so nothing is stranded). A change therefore waits at most
one ``debounce`` (plus the write itself), each id is written at most once per tick, and the
number of transactions per second is about ``1 / debounce`` however many messages stream.

Exclusivity. A write marks its entries ``busy`` with one future; any other write for those ids
(a terminal update, a flush, a delete) waits for that future first, so writes for one id never
reorder and events for one id are published in write order. Waiting goes through
``asyncio.wait``, which never cancels the awaited future, and no lock is held while the broker
waits for a slow subscriber.

Failures. A failed write puts its snapshots back as pending (unless a newer change replaced them),
counts the failure, sends ``write_failed`` and retries at the next tick with exponential backoff.
``flush`` / ``flush_all`` attempt the write themselves and raise ``WriteFailed`` while the fault
lasts. A row that vanished (deleted elsewhere) is reported as ``MessageNotFound``.

Memory. Clean entries of finished messages are released right after their write; clean entries
idle for ``idle_release`` seconds are released by the flusher. A later update of a released
message is judged against nothing written, which at worst makes one more write synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from blinker import Signal

from pubsub import Broker, EventType

from .._database._repository import Repository, WriteResult
from .._errors import MessageNotFound, StoreClosed, WriteFailed
from .._model import Message, utc_now
from ._signals import batch_written, write_failed
from ._terminal import Marks, marks_of

__all__ = ["CommitMode", "WriterCounters", "Writer"]

_MAX_BACKOFF = 2.0
_log = logging.getLogger("messagestore")
_TOMBSTONES = 10_000


class CommitMode(Enum):
    """How a batch becomes transactions (``PER_MESSAGE`` exists for the benchmark)."""

    GROUP = "group"
    PER_MESSAGE = "per_message"


@dataclass(slots=True)
class WriterCounters:
    """Running totals; ``MessageService.stats()`` snapshots them."""

    updates: int = 0
    coalesced: int = 0
    transactions: int = 0
    rows: int = 0
    bytes: int = 0
    write_failures: int = 0
    terminal_writes: int = 0


class _Entry:
    """Buffered state of one message id."""

    __slots__ = (
        "accepted",
        "accepted_marks",
        "busy",
        "deleting",
        "dirty_since",
        "durable",
        "id",
        "last_touch",
        "pending",
        "session_id",
        "written",
        "written_marks",
    )

    def __init__(self, message: Message, written: Message | None) -> None:
        self.id = message.id
        self.session_id = message.session_id
        self.pending: Message | None = None
        self.written = written
        self.written_marks: Marks | None = None if written is None else marks_of(written)
        self.accepted_marks = self.written_marks
        self.accepted = 0
        self.durable = 0
        self.dirty_since = 0.0
        self.last_touch = time.monotonic()
        self.busy: asyncio.Future[None] | None = None
        self.deleting = False


class _Write:
    """One write in progress: the entries it reserved, the ones it took a snapshot of (with
    the snapshots), and the future they are all busy on."""

    __slots__ = ("ages", "batch", "done", "entries", "reserved", "seen", "started")

    def __init__(self, reserved: Sequence[_Entry], done: asyncio.Future[None]) -> None:
        self.reserved = reserved
        self.done = done
        self.entries: list[_Entry] = []
        self.batch: list[Message] = []
        self.seen: list[int] = []
        self.ages: list[float] = []
        self.started = time.monotonic()


class Writer:
    """Buffers accepted states and writes them; owned by one ``MessageService``."""

    def __init__(
        self,
        repository: Repository,
        broker: Broker[Message],
        *,
        debounce: float,
        mode: CommitMode = CommitMode.GROUP,
        idle_release: float = 30.0,
        sender: object = None,
    ) -> None:
        self._repository = repository
        # Telemetry signals name the public object (the MessageService) as their sender.
        self._sender = self if sender is None else sender
        self._broker = broker
        self._debounce = debounce
        self._mode = mode
        self._idle_release = idle_release
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._dirty: dict[str, _Entry] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._unreported_missing: dict[str, None] = {}
        self.counters = WriterCounters()
        self._failures = 0
        self._tick_due: float | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._flusher: asyncio.Task[None] | None = None
        # Writes whose caller was cancelled: they finish on their own (see ``_write``).
        self._abandoned: set[asyncio.Task[WriteResult]] = set()
        self._closed = False
        if debounce > 0:
            self._flusher = self._loop.create_task(self._run(), name="messagestore-flusher")

    # -- accepting ---------------------------------------------------------------------------

    def last_accepted(self, message_id: str) -> Message | None:
        """The newest accepted state of the id (pending or written), if the buffer has one.

        Raises ``MessageNotFound`` for an id that was deleted or found missing.
        """
        entry = self._entries.get(message_id)
        if entry is None:
            if message_id in self._tombstones:
                raise MessageNotFound(message_id)
            return None
        return entry.pending or entry.written

    def track_created(self, message: Message) -> None:
        """Remember a just-created message as written, for terminal judgement."""
        self._tombstones.pop(message.id, None)
        self._entries[message.id] = _Entry(message, message)

    def accept(self, copy: Message, *, streaming_only: bool = False) -> bool:
        """Buffer ``copy`` (already validated, owned by the writer).

        ``streaming_only`` says the copy differs from the last accepted state only in streamed
        text or thinking, so its terminal facts are those of that state (no scan needed).
        Returns True if the change is terminal or debouncing is off: the caller must then
        ``await write_now(copy.id)`` before returning to its own caller.
        """
        entry = self._entries.get(copy.id)
        if entry is None:
            entry = self._entries[copy.id] = _Entry(copy, None)
        elif entry.deleting:
            raise MessageNotFound(copy.id)
        else:
            self._entries.move_to_end(copy.id)
        counters = self.counters
        counters.updates += 1
        now = time.monotonic()
        entry.last_touch = now
        if entry.pending is None:
            entry.dirty_since = now
        else:
            counters.coalesced += 1
        entry.pending = copy
        entry.accepted += 1
        if self._flusher is None:
            return True
        if copy.id not in self._dirty:
            self._dirty[copy.id] = entry
            self._arm(now + self._debounce)
        if not (streaming_only and entry.accepted_marks is not None):
            entry.accepted_marks = marks_of(copy)
        return entry.accepted_marks.is_terminal_after(entry.written_marks)

    # -- writing -----------------------------------------------------------------------------

    async def write_now(self, message_id: str) -> None:
        """Write the id's pending state now (after any in-flight write) and publish it.

        Whoever ends up writing the state (this call, or a tick that got to it first while
        this call waited) publishes a terminal state with ``publish_must_deliver``.
        """
        entry = self._entries.get(message_id)
        if entry is None:
            return
        target = entry.accepted
        while entry.durable < target and not entry.deleting:
            if entry.busy is not None:
                await asyncio.wait([entry.busy])
            elif entry.pending is not None:
                await self._write([entry], from_timer=False)
            else:
                break

    async def flush(self, message_id: str) -> None:
        """Return once every change to ``message_id`` accepted before the call is durable."""
        self._check_open()
        self._raise_missing(message_id)
        await self.write_now(message_id)
        self._raise_missing(message_id)

    async def flush_all(self) -> None:
        """Return once every change accepted before the call, for every id, is durable."""
        self._check_open()
        await self._drain()

    async def _drain(self) -> None:
        targets = {e: e.accepted for e in self._entries.values() if e.durable < e.accepted}
        while targets:
            targets = {e: t for e, t in targets.items() if e.durable < t and not e.deleting}
            ready = [e for e in targets if e.busy is None and e.pending is not None]
            if ready:
                await self._write(ready, from_timer=False)
            elif busy := {e.busy for e in targets if e.busy is not None}:
                await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
            else:
                break
        if self._unreported_missing:
            missing = next(iter(self._unreported_missing))
            self._unreported_missing.clear()
            raise MessageNotFound(missing)

    async def _write(self, entries: Sequence[_Entry], *, from_timer: bool) -> None:
        """Write the entries' pending snapshots in one go, then publish them.

        The entries must not be busy. Rows whose change is terminal (judged against what was
        written before) are published with ``publish_must_deliver``, the others with ``publish``.

        The database work runs in a task of the writer's that the caller awaits through
        ``asyncio.shield``: a caller that is cancelled (an agent turn given up on) stops
        waiting, but the write is not cut off in the middle of a transaction; it finishes and
        settles as usual, and its entries stay busy until then, so writes of an id keep their
        order and ``close()`` waits for it.
        """
        write = _Write(entries, self._loop.create_future())
        for entry in entries:
            assert entry.busy is None and entry.pending is not None
            entry.busy = write.done
        commit = self._loop.create_task(self._snapshot_and_commit(write))
        try:
            result = await asyncio.shield(commit)
        except asyncio.CancelledError:
            self._abandoned.add(commit)
            commit.add_done_callback(lambda task: self._finish_abandoned(task, write, from_timer))
            raise
        except Exception as exc:
            self._undo(write)
            raise self._failed(exc, entries, from_timer) from exc
        waits = self._finish(write, result)
        if waits:
            await asyncio.gather(*waits)

    async def _snapshot_and_commit(self, write: _Write) -> WriteResult:
        """Take the reserved entries' newest snapshots, then write them (the commit task).

        The snapshot is taken here, in the same step as the call into the repository, so a
        write carries everything accepted before it started; an entry deleted since it was
        reserved has no pending state left and is skipped.
        """
        now = utc_now()
        for entry in write.reserved:
            if entry.pending is None:
                continue
            entry.pending.updated_at = now
            write.entries.append(entry)
            write.batch.append(entry.pending)
            write.seen.append(entry.accepted)
            write.ages.append(entry.dirty_since)
            entry.pending = None
            self._dirty.pop(entry.id, None)
        return await self._commit(write.batch)

    def _finish(self, write: _Write, result: WriteResult) -> list[asyncio.Future[None]]:
        """The write committed: record it, release the entries, publish; return the waits."""
        committed = time.monotonic()
        self._failures = 0
        lossy, terminal = self._settle(write.entries, write.batch, write.seen, result)
        self._release_reserved(write)
        self.counters.terminal_writes += len(terminal)
        staleness = [committed - a for a in write.ages]
        self._announce_batch(result, committed - write.started, staleness, bool(terminal))
        return self._publish(lossy, terminal)

    def _undo(self, write: _Write) -> None:
        """The write did not happen: put its snapshots back and release the entries."""
        self._restore(write.entries, write.batch)
        self._release_reserved(write)

    def _release_reserved(self, write: _Write) -> None:
        for entry in write.reserved:
            if entry.busy is write.done:
                entry.busy = None
        write.done.set_result(None)

    def _finish_abandoned(
        self, commit: asyncio.Task[WriteResult], write: _Write, from_timer: bool
    ) -> None:
        """Settle a write whose caller was cancelled, once it has ended."""
        self._abandoned.discard(commit)
        if commit.cancelled():
            self._undo(write)
        elif (exc := commit.exception()) is not None:
            self._undo(write)
            if isinstance(exc, Exception):
                self._failed(exc, write.entries, from_timer)
        else:
            self._finish(write, commit.result())  # nobody waits for slow subscribers

    async def _commit(self, batch: list[Message]) -> WriteResult:
        if not batch:  # everything reserved was deleted meanwhile
            return WriteResult(0, 0, frozenset())
        counters = self.counters
        if self._mode is CommitMode.GROUP or len(batch) == 1:
            result = await self._repository.write_messages(batch)
            counters.transactions += 1
        else:
            rows = size = 0
            missing: set[str] = set()
            for message in batch:
                one = await self._repository.write_messages([message])
                counters.transactions += 1
                rows, size = rows + one.rows, size + one.bytes
                missing |= one.missing
            result = WriteResult(rows, size, frozenset(missing))
        counters.rows += result.rows
        counters.bytes += result.bytes
        return result

    def _settle(
        self,
        entries: Sequence[_Entry],
        batch: list[Message],
        seen: list[int],
        result: WriteResult,
    ) -> tuple[list[Message], list[Message]]:
        """Record what became durable; return the (lossy, terminal) states to announce."""
        lossy: list[Message] = []
        terminal: list[Message] = []
        for entry, message, accepted in zip(entries, batch, seen, strict=True):
            entry.durable = max(entry.durable, accepted)
            if message.id in result.missing:
                self._forget(entry, missing=True)
                continue
            marks = marks_of(message)
            is_terminal = marks.is_terminal_after(entry.written_marks)
            entry.written, entry.written_marks = message, marks
            if not entry.deleting:
                (terminal if is_terminal else lossy).append(message)
                if entry.pending is None and marks.finished:
                    self._release(entry)
            if entry.pending is not None and entry.id not in self._dirty:
                self._dirty[entry.id] = entry
                self._arm(time.monotonic() + self._debounce)
        return lossy, terminal

    def _restore(self, entries: Sequence[_Entry], batch: list[Message]) -> None:
        """Put the snapshots of a write that did not complete back (unless superseded).

        A tick is armed so they are written again even if nothing else arrives: a failure
        re-arms it with backoff right after; a cancelled caller (a terminal ``update()`` or a
        ``flush`` given up on) leaves it as is.
        """
        for entry, message in zip(entries, batch, strict=True):
            if entry.deleting:
                continue
            if entry.pending is None:
                entry.pending = message
            self._dirty.setdefault(entry.id, entry)
        if self._dirty:
            self._arm(time.monotonic() + self._debounce)

    def _failed(self, exc: Exception, entries: Sequence[_Entry], from_timer: bool) -> WriteFailed:
        self.counters.write_failures += 1
        self._failures += 1
        retry_in = self._backoff()
        ids = [e.id for e in entries]
        self._arm(time.monotonic() + retry_in, replace=True)
        if write_failed.receivers:
            _send(write_failed, self._sender, error=exc, message_ids=ids, retry_in=retry_in)
        where = "timer-fired" if from_timer else "requested"
        return WriteFailed(f"{where} write of {len(ids)} message(s) failed: {exc!r}")

    def _backoff(self) -> float:
        base = max(self._debounce, 0.01)
        return float(min(base * 2 ** (self._failures - 1), _MAX_BACKOFF))

    def _announce_batch(
        self, result: WriteResult, seconds: float, staleness: list[float], terminal: bool
    ) -> None:
        if batch_written.receivers:
            _send(
                batch_written,
                self._sender,
                rows=result.rows,
                bytes=result.bytes,
                seconds=seconds,
                staleness=staleness,
                terminal=terminal,
            )

    def _publish(
        self, lossy: Iterable[Message], terminal: Sequence[Message]
    ) -> list[asyncio.Future[None]]:
        """Announce written states; subscribers get copies they may keep and change.

        ``enqueue_must_deliver`` takes each event's place in every subscriber's order before
        anything yields, so a later write of the same id (free to start once ``busy`` is
        released) cannot overtake it. Returns the waits for slow subscribers, to run together.
        """
        waits = [
            self._broker.enqueue_must_deliver(EventType.UPDATED, message.clone())
            for message in terminal
        ]
        for message in lossy:
            self._broker.publish(EventType.UPDATED, message.clone())
        return waits

    # -- deleting ----------------------------------------------------------------------------

    async def delete(
        self, is_target: Callable[[_Entry], bool], delete_rows: Callable[[], Awaitable[object]]
    ) -> None:
        """Drop pending state of the matching entries, wait out their writes, delete rows.

        Matching entries refuse updates from the start (``MessageNotFound``), so no buffered
        write can bring a row back and no event for them can follow the ``DELETED`` event that
        the caller publishes after this returns.
        """
        targets = [e for e in self._entries.values() if is_target(e)]
        for entry in targets:
            entry.deleting = True
            entry.pending = None
            self._dirty.pop(entry.id, None)
        try:
            busy = {e.busy for e in targets if e.busy is not None}
            if busy:
                await asyncio.wait(busy)
            await delete_rows()
        except BaseException:
            for entry in targets:
                entry.deleting = False
            raise

    def deleted(self, message_ids: Iterable[str]) -> None:
        """The rows are gone: forget their entries and refuse later updates."""
        for message_id in message_ids:
            entry = self._entries.get(message_id)
            if entry is not None:
                self._forget(entry, missing=False)
            else:
                self._tombstone(message_id)

    def _forget(self, entry: _Entry, *, missing: bool) -> None:
        entry.deleting = True
        entry.pending = None
        self._dirty.pop(entry.id, None)
        self._entries.pop(entry.id, None)
        self._tombstone(entry.id)
        if missing:
            self._unreported_missing[entry.id] = None

    def _tombstone(self, message_id: str) -> None:
        self._tombstones[message_id] = None
        if len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _raise_missing(self, message_id: str) -> None:
        """Report, once, that a buffered write found the row gone."""
        if message_id in self._unreported_missing:
            del self._unreported_missing[message_id]
            raise MessageNotFound(message_id)

    def _release(self, entry: _Entry) -> None:
        self._entries.pop(entry.id, None)

    def _release_idle(self, now: float) -> None:
        cutoff = now - self._idle_release
        for entry in list(self._entries.values()):
            if entry.last_touch > cutoff:
                break
            if entry.pending is None and entry.busy is None and not entry.deleting:
                self._release(entry)

    # -- the flusher -------------------------------------------------------------------------

    def _arm(self, due: float, *, replace: bool = False) -> None:
        """Make sure a tick happens no later than ``due`` (or exactly at ``due`` if replace)."""
        if self._flusher is None:
            return
        if self._tick_due is not None and (self._tick_due <= due and not replace):
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._tick_due = due
        delay = max(0.0, due - time.monotonic())
        self._tick_handle = self._loop.call_later(delay, self._tick.set)

    async def _run(self) -> None:
        while True:
            await self._tick.wait()
            self._tick.clear()
            # This tick supersedes any other one already scheduled (one armed during the last
            # write may have fired too): cancel it, or it would add a nearly empty extra tick.
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            self._tick_due = self._tick_handle = None
            started = time.monotonic()
            ready = [e for e in self._dirty.values() if e.busy is None]
            failed = False
            if ready:
                try:
                    await self._write(ready, from_timer=True)
                except WriteFailed:
                    failed = True  # counted, signalled and re-armed with backoff in _failed
                except Exception:  # a bug must not end the flusher silently: log, keep going
                    _log.exception("messagestore flusher: unexpected error in a write")
            self._release_idle(time.monotonic())
            if self._dirty and not failed:
                self._arm(started + self._debounce)
            elif not self._dirty and self._entries:
                self._arm(time.monotonic() + self._idle_release)

    # -- lifecycle ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("message service")

    @property
    def pending_count(self) -> int:
        """Messages with a change not yet durable."""
        return sum(1 for e in self._entries.values() if e.pending is not None)

    @property
    def entry_count(self) -> int:
        """Messages the buffer holds state for (pending or recently written)."""
        return len(self._entries)

    async def close(self) -> None:
        """Write everything, then stop the flusher. Idempotent; raises a final write failure."""
        if self._closed:
            return
        try:
            await self._drain()
        finally:
            self._closed = True
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            if self._flusher is not None:
                self._flusher.cancel()
                await asyncio.gather(self._flusher, return_exceptions=True)
            if self._abandoned:  # writes whose caller was cancelled: let them end, not cut them
                await asyncio.wait(set(self._abandoned))


def _send(signal: Signal, sender: object, **kwargs: Any) -> None:
    """Send a telemetry signal; a receiver that raises is logged, never breaks a write."""
    try:
        signal.send(sender, **kwargs)
    except Exception:
        _log.exception("a messagestore signal receiver raised; ignored")
