"""The update contract (the README's "The update contract") on SQLite and PostgreSQL.

Tests wait on events (a write starting, a batch committing, an event arriving), each wait
bounded; the few negative checks ("this has not finished yet") use a short bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    MessageNotFound,
    Role,
    Store,
    StoreClosed,
    Text,
    ToolCall,
    WriteFailed,
    batch_written,
    open_store,
    write_failed,
)
from messagestore._database._repository import Repository, WriteItem, WriteResult
from messagestore._store import StoreOptions, open_store_with
from messagestore.testing import flusher_running
from pubsub import Event, EventType, Subscription
from tests.support.helpers import failed_future

WAIT = 10.0  # upper bound for anything expected to happen


class WriteProbe:
    """Wraps ``Repository.write_messages`` to signal when a write starts and optionally fail."""

    def __init__(self, repository: Repository) -> None:
        self._real = repository.write_messages
        self.started = asyncio.Event()
        self.calls: list[list[str]] = []
        self.failures_left = 0
        repository.write_messages = self._write  # type: ignore[method-assign]

    def _write(
        self, batch: Sequence[WriteItem], on_commit: Any, **kw: Any
    ) -> asyncio.Future[WriteResult]:
        self.calls.append([item.state.id for item in batch])
        self.started.set()
        if self.failures_left:
            self.failures_left -= 1
            return failed_future(sqlite3.OperationalError("disk I/O error (injected)"))
        return self._real(batch, on_commit, **kw)

    async def next_write(self) -> None:
        self.started.clear()
        await asyncio.wait_for(self.started.wait(), WAIT)


def repository_of(store: Store) -> Repository:
    return store.messages._repository


@contextlib.asynccontextmanager
async def opened(url: str, **kwargs: Any) -> AsyncIterator[Store]:
    async with open_store_with(url, StoreOptions(**kwargs)) as store:
        yield store


async def new_message(store: Store) -> Message:
    session = await store.sessions.create("debounce")
    return await store.messages.create(session.id, role=Role.ASSISTANT)


async def stored_text(store: Store, message_id: str) -> str:
    return (await store.messages.get(message_id)).text


def drain(sub: Subscription[Message]) -> list[Event[Message]]:
    events = []
    with contextlib.suppress(Exception):
        while True:
            events.append(sub.receive_nowait())
    return events


class Seen(list[dict[str, Any]]):
    """Signal payloads received so far, with an event set on each arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    async def next(self) -> None:
        """Wait for one more arrival after this call."""
        await self.beyond(len(self))

    async def beyond(self, count: int) -> None:
        """Wait until more than ``count`` payloads have arrived (no race with a check)."""
        async with asyncio.timeout(WAIT):
            while len(self) <= count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.contextmanager
def on_signal(signal: Any) -> Iterator[Seen]:
    seen = Seen()

    def receiver(sender: object, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})
        seen.arrived.set()

    signal.connect(receiver)
    try:
        yield seen
    finally:
        signal.disconnect(receiver)


class WriteLock:
    """Holds the database's write path from a second connection, as another writer would."""

    def __init__(self, url: str, message_id: str) -> None:
        self.url = url
        self.message_id = message_id
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        self._engine: Any = None

    async def __aenter__(self) -> WriteLock:
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[1]
            self._sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            self._engine = create_async_engine(self.url)
            self._pg = await self._engine.connect()
            await self._pg.begin()
            await self._pg.execute(
                text("SELECT id FROM messages WHERE id = :id FOR UPDATE"), {"id": self.message_id}
            )
        return self

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            await self._pg.rollback()
            await self._pg.close()
            await self._engine.dispose()
            self._pg = None

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


@contextlib.asynccontextmanager
async def write_in_flight(
    store: Store, url: str, message: Message, delta: str
) -> AsyncIterator[WriteLock]:
    """Stream ``delta`` and hold the timer's write of it in flight (the write path is locked)."""
    probe = WriteProbe(repository_of(store))
    async with WriteLock(url, message.id) as lock:
        message.append_text(delta)
        await store.messages.update(message)
        await probe.next_write()
        yield lock


async def still_running(awaitable: asyncio.Future[Any], seconds: float = 0.2) -> bool:
    done, _ = await asyncio.wait([awaitable], timeout=seconds)
    return not done


# -- 1. validate and copy -------------------------------------------------------------------------


async def test_update_copies_before_returning(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        message.append_text("kept")
        await store.messages.update(message)
        message.append_text(" and later mutation not kept")
        message.parts.append(Text("x"))  # invalid now, but only the caller's object
        await store.messages.flush(message.id)
        assert await stored_text(store, message.id) == "kept"


async def test_invalid_input_raises_at_once_and_buffers_nothing(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        message.append_text("good")
        await store.messages.update(message)
        bad = message.clone()
        bad.parts.append(Text("second text part"))
        with pytest.raises(InvalidMessage, match="more than one Text"):
            await store.messages.update(bad)
        with pytest.raises(InvalidMessage, match="Message"):
            await store.messages.update("not a message")  # type: ignore[arg-type]
        await store.messages.flush_all()
        assert await stored_text(store, message.id) == "good"


# -- 2. fixed window, bounded staleness, group commit ---------------------------------------------


async def test_nothing_is_written_before_the_window_closes(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        for token in ("a", "b", "c"):
            message.append_text(token)
            await store.messages.update(message)
        assert await stored_text(store, message.id) == ""
        assert store.messages.stats().pending_messages == 1
        await store.messages.flush(message.id)
        assert await stored_text(store, message.id) == "abc"


async def test_timer_writes_within_the_window_without_flush(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        with on_signal(batch_written) as batches:
            message.append_text("tick")
            await store.messages.update(message)
            await batches.next()
        assert await stored_text(store, message.id) == "tick"
        assert batches[0]["rows"] == 1


async def test_later_changes_do_not_extend_the_window(db_url: str) -> None:
    """Continuous updates faster than the window still get written once per window."""
    loop = asyncio.get_running_loop()
    async with opened(db_url, debounce=0.1) as store:
        message = await new_message(store)
        repository = repository_of(store)
        real = repository.write_messages
        started: list[float] = []

        def timed(
            batch: Sequence[Message], on_commit: Any, **kw: Any
        ) -> asyncio.Future[WriteResult]:
            started.append(loop.time())
            return real(batch, on_commit, **kw)

        repository.write_messages = timed  # type: ignore[method-assign]
        with on_signal(batch_written) as batches:
            async with asyncio.timeout(WAIT):  # an extended window would never be written
                while len(batches) < 3:  # an update every 10 ms until three writes landed
                    message.append_text("x")
                    await store.messages.update(message)
                    await asyncio.sleep(0.01)
        # Lower bounds only (a busy machine makes gaps longer, never shorter): the window
        # was not extended by the updates that kept arriving, and never split either.
        assert len(started) >= 3
        gaps = [b - a for a, b in itertools.pairwise(started)]
        assert all(gap >= 0.1 - 0.005 for gap in gaps), gaps


async def test_group_commit_writes_due_messages_in_one_transaction(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        session = await store.sessions.create("group")
        messages = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(40)]
        probe = WriteProbe(repository_of(store))
        before = store.messages.stats().transactions
        for message in messages:
            message.append_text("same tick")
            await store.messages.update(message)
        await probe.next_write()
        await store.messages.flush_all()
        assert probe.calls[0] == [m.id for m in messages]
        assert store.messages.stats().transactions - before == 1
        for message in messages:
            assert await stored_text(store, message.id) == "same tick"


# -- 3. terminal changes are written and published before update() returns ------------------------


def _finish(m: Message) -> None:
    m.add_finish(FinishReason.END_TURN)


def _add_call(m: Message) -> None:
    m.add_tool_call(ToolCall("c1", "ls"))


def _finish_reasoning(m: Message) -> None:
    m.append_reasoning("hmm")
    m.finish_reasoning()


@pytest.mark.parametrize("change", [_finish, _add_call, _finish_reasoning])
async def test_terminal_change_is_durable_and_announced_on_return(
    db_url: str, change: Callable[[Message], None]
) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        async with store.messages.subscribe() as sub:
            message.append_text("before")
            change(message)
            await store.messages.update(message)
            stored = await store.messages.get(message.id)
            assert stored.parts == message.parts
            events = drain(sub)
        assert [(e.type, e.payload.parts) for e in events] == [(EventType.UPDATED, message.parts)]


async def test_tool_call_finishing_is_terminal_but_input_growth_is_not(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        message.add_tool_call(ToolCall("c1", "grep"))
        await store.messages.update(message)  # terminal: count changed
        message.add_tool_call(ToolCall("c1", "grep", '{"q":'))
        await store.messages.update(message)  # intermediate: input grows
        assert (await store.messages.get(message.id)).tool_calls[0].input == ""
        message.add_tool_call(ToolCall("c1", "grep", '{"q": 1}', finished=True))
        await store.messages.update(message)  # terminal: finished flipped
        assert (await store.messages.get(message.id)).tool_calls[0].finished


async def test_terminal_update_waits_for_an_in_flight_write_of_the_same_id(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        async with write_in_flight(store, db_url, message, "streamed") as lock:
            message.add_finish(FinishReason.END_TURN)
            terminal = asyncio.ensure_future(store.messages.update(message))
            assert await still_running(terminal)
            await lock.release()
            await asyncio.wait_for(terminal, WAIT)
        assert (await store.messages.get(message.id)).is_finished


async def test_a_cancelled_terminal_update_is_still_written_and_announced(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        async with store.messages.subscribe() as sub:
            async with WriteLock(db_url, message.id) as lock:
                message.add_finish(FinishReason.END_TURN)
                terminal = asyncio.ensure_future(store.messages.update(message))
                assert await still_running(terminal)  # blocked in its write, past a tick
                terminal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await terminal
                await lock.release()
            async with asyncio.timeout(WAIT):
                event = await sub.receive()  # the cancelled caller's write, announced
        assert event.type is EventType.UPDATED
        assert event.payload.is_finished
        assert await store.messages.get(message.id) == event.payload


# -- 4/5/6. flush and in-flight writes ------------------------------------------------------------


async def test_flush_waits_for_an_in_flight_timer_write_and_a_newer_change(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        async with write_in_flight(store, db_url, message, "first") as lock:
            message.append_text(" second")  # arrives while the write is in flight
            await store.messages.update(message)
            flushing = asyncio.ensure_future(store.messages.flush(message.id))
            assert await still_running(flushing)
            await lock.release()
            await asyncio.wait_for(flushing, WAIT)
        assert await stored_text(store, message.id) == "first second"


async def test_change_during_a_write_lands_without_another_update(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        async with write_in_flight(store, db_url, message, "first") as lock:
            message.append_text(" second")
            await store.messages.update(message)
            await lock.release()
        await _wait_until_text(store, message.id, "first second")


async def _wait_until_text(store: Store, message_id: str, expected: str) -> None:
    """Wait, batch by batch, until the stored text is ``expected``."""
    with on_signal(batch_written) as batches:
        async with asyncio.timeout(WAIT):
            while True:
                seen = len(batches)
                if await stored_text(store, message_id) == expected:
                    return
                await batches.beyond(seen)


async def test_flush_all_writes_every_pending_message_in_one_transaction(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("flush all")
        messages = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(25)]
        for i, message in enumerate(messages):
            message.append_text(f"m{i}")
            await store.messages.update(message)
        before = store.messages.stats().transactions
        await store.messages.flush_all()
        assert store.messages.stats().transactions - before == 1
        assert store.messages.stats().pending_messages == 0
        for i, message in enumerate(messages):
            assert await stored_text(store, message.id) == f"m{i}"


async def test_flush_of_unknown_or_clean_ids_returns(db_url: str) -> None:
    async with opened(db_url) as store:
        await store.messages.flush("never-seen")
        await store.messages.flush_all()


# -- deletes --------------------------------------------------------------------------------------


async def test_delete_drops_pending_state_and_refuses_later_updates(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        async with store.messages.subscribe() as sub:
            message.append_text("never written")
            await store.messages.update(message)
            await store.messages.delete(message.id)
            with pytest.raises(MessageNotFound):
                await store.messages.update(message)
            await store.messages.flush_all()
            events = drain(sub)
        assert [e.type for e in events] == [EventType.DELETED]
        with pytest.raises(MessageNotFound):
            await store.messages.get(message.id)


async def test_delete_waits_for_an_in_flight_write_and_nothing_follows_deleted(
    db_url: str,
) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        async with store.messages.subscribe() as sub:
            async with write_in_flight(store, db_url, message, "in flight") as lock:
                deleting = asyncio.ensure_future(store.messages.delete(message.id))
                assert await still_running(deleting)
                with pytest.raises(MessageNotFound):
                    await store.messages.update(message)
                await lock.release()
                await asyncio.wait_for(deleting, WAIT)
            await store.messages.flush_all()
            events = drain(sub)
        assert events[-1].type is EventType.DELETED
        assert all(e.type is EventType.UPDATED for e in events[:-1])
        with pytest.raises(MessageNotFound):
            await store.messages.get(message.id)


async def test_session_delete_drops_buffered_messages(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        message = await new_message(store)
        message.append_text("pending")
        await store.messages.update(message)
        await store.sessions.delete(message.session_id)
        with pytest.raises(MessageNotFound):
            await store.messages.update(message)
        await store.messages.flush_all()
        assert store.messages.stats().pending_messages == 0


async def test_update_of_a_message_that_never_existed_fails_at_flush(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("ghost")
        ghost = Message("ghost-id", session.id, Role.ASSISTANT, [Text("boo")])
        await store.messages.update(ghost)
        with pytest.raises(MessageNotFound, match="ghost-id"):
            await store.messages.flush(ghost.id)
        with pytest.raises(MessageNotFound):
            await store.messages.update(ghost)  # now known to be missing
        with pytest.raises(MessageNotFound):
            await store.messages.get(ghost.id)


async def test_message_deleted_by_another_store_is_reported_by_flush_all(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store, opened(db_url) as other:
        message = await new_message(store)
        message.append_text("orphan")
        await store.messages.update(message)
        await other.messages.delete(message.id)
        with pytest.raises(MessageNotFound):
            await store.messages.flush_all()
        await store.messages.flush_all()  # reported once


# -- 8. failures are kept, retried, signalled and raised by flush ---------------------------------


async def test_failed_timer_write_is_retried_and_flush_raises_meanwhile(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        probe = WriteProbe(repository_of(store))
        probe.failures_left = 3
        with on_signal(write_failed) as failures:
            message.append_text("survives")
            await store.messages.update(message)
            await probe.next_write()  # timer write: fails
            with pytest.raises(WriteFailed) as caught:
                await store.messages.flush(message.id)  # flush's own attempt: fails
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            await _wait_until_text(store, message.id, "survives")  # a retry lands it
        assert store.messages.stats().write_failures >= 2
        assert failures
        assert failures[0]["message_ids"] == [message.id]
        assert failures[0]["sender"] is store.messages
        assert failures[0]["retry_in"] > 0
        await store.messages.flush(message.id)
        assert flusher_running(store)


async def test_failed_terminal_write_raises_and_is_retried(db_url: str) -> None:
    async with opened(db_url, debounce=0.05) as store:
        message = await new_message(store)
        probe = WriteProbe(repository_of(store))
        probe.failures_left = 1
        message.add_finish(FinishReason.END_TURN)
        with on_signal(batch_written) as batches:
            with pytest.raises(WriteFailed):
                await store.messages.update(message)
            await batches.beyond(0)  # the retry committed
        assert (await store.messages.get(message.id)).is_finished


# -- memory, close, stats -------------------------------------------------------------------------


async def test_finished_and_idle_messages_are_released(db_url: str) -> None:
    async with opened(db_url, debounce=0.02, idle_release=0.2) as store:
        finished = await new_message(store)
        idle = await new_message(store)
        idle.append_text("then silence")
        await store.messages.update(idle)
        finished.add_finish(FinishReason.END_TURN)
        await store.messages.update(finished)
        assert store.messages.stats().buffered_messages <= 1
        async with asyncio.timeout(WAIT):
            # Release happens inside a flusher tick, which signals nothing: poll, bounded.
            while store.messages.stats().buffered_messages:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        idle.append_text(" and more")  # a released message can still be updated
        await store.messages.update(idle)
        await store.messages.flush(idle.id)
        assert await stored_text(store, idle.id) == "then silence and more"


async def test_close_flushes_stops_the_flusher_and_refuses_calls(db_url: str) -> None:
    store = await open_store(db_url, debounce=60)
    message = await new_message(store)
    message.append_text("flushed by close")
    await store.messages.update(message)
    assert flusher_running(store)
    await store.close()
    assert not flusher_running(store)
    for call in (store.messages.flush_all(), store.messages.flush(message.id)):
        with pytest.raises(StoreClosed):
            await call
    async with opened(db_url) as again:
        assert await stored_text(again, message.id) == "flushed by close"


async def test_stats_count_updates_coalescing_and_writes(db_url: str) -> None:
    async with opened(db_url, debounce=60) as store, store.messages.subscribe():
        message = await new_message(store)
        for _ in range(10):
            message.append_text("ab")
            await store.messages.update(message)
        await store.messages.flush_all()
        stats = store.messages.stats()
        assert stats.updates_accepted == 10
        assert stats.deltas_coalesced == 9
        assert stats.rows_written == 1
        assert stats.bytes_written > 20
        assert stats.pending_messages == 0
        assert stats.broker.published >= 2  # created + updated (someone listens)


async def test_write_through_mode_writes_every_update(db_url: str) -> None:
    async with opened(db_url, debounce=0) as store:
        message = await new_message(store)
        before = store.messages.stats().transactions
        for _ in range(5):
            message.append_text("w")
            await store.messages.update(message)
            assert await stored_text(store, message.id) == message.text
        assert store.messages.stats().transactions - before == 5


async def test_timestamps_come_from_the_clock(db_url: str) -> None:
    frozen = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    async with opened(db_url, debounce=60) as store:
        with freeze_time(frozen, real_asyncio=True):
            message = await new_message(store)
            message.add_finish(FinishReason.END_TURN)
            await store.messages.update(message)
        stored = await store.messages.get(message.id)
    assert stored.created_at == frozen
    assert stored.updated_at == frozen
    assert stored.finish is not None
    assert stored.finish.time == frozen
