"""One owner of a store's background loops: a loop that dies is logged, writes then fail fast
with ``BackgroundTaskFailed`` naming it, and ``close()`` stops the loops newest first and
leaves no task, thread or unretrieved exception behind. Both backends.

Loops are killed through ``messagestore.testing`` (``break_loop`` for the store's loops,
``faults(store).crash_next`` for the database's workers), never by patching the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from messagestore import (
    BackgroundTaskFailed,
    FinishReason,
    Message,
    MessageStoreError,
    Role,
    Session,
    Store,
    open_store,
)
from messagestore._supervisor import Supervisor
from messagestore.testing import break_loop, faults, loops

WAIT = 10.0
STORE_LOOPS = ["flusher", "lease-heartbeat", "retention", "recovery-sweeper"]
FEED_LOOPS = ["feed", "feed-hints"]


@dataclass
class Opened:
    """A store opened by a test, with what existed before it (to find leftovers)."""

    store: Store
    tasks: set[asyncio.Task[Any]]
    threads: set[int]


@pytest.fixture
async def opened(db_url: str) -> AsyncIterator[Opened]:
    tasks = asyncio.all_tasks()
    threads = {t.ident for t in threading.enumerate() if t.ident is not None}
    store = await open_store(db_url)
    try:
        yield Opened(store, tasks, threads)
    finally:
        async with asyncio.timeout(WAIT):
            await store.close()


async def nothing_left(opened: Opened) -> None:
    """No task or database thread outlives ``close()``, and no exception was left in one."""
    gc.collect()
    left = asyncio.all_tasks() - opened.tasks - {asyncio.current_task()}
    assert not left, f"tasks left after close: {left}"
    threads = [t.name for t in threading.enumerate() if t.ident not in opened.threads]
    assert not threads, f"threads left after close: {threads}"


def no_unretrieved(caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unretrieved, [r.getMessage() for r in unretrieved]


def deaths(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and f"background loop {name!r}" in r.getMessage()
    ]


async def some_data(store: Store) -> tuple[Session, Message]:
    session = await store.sessions.create("supervised")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    return session, message


Call = Callable[[], Coroutine[Any, Any, object]]


def every_write(store: Store, session: Session, message: Message) -> dict[str, Call]:
    """One call of each kind of write, each of which must be refused."""

    async def terminal_update() -> None:
        finished = message.clone()
        finished.add_finish(FinishReason.END_TURN)
        await store.messages.update(finished)

    return {
        "sessions.create": lambda: store.sessions.create("refused"),
        "sessions.save": lambda: store.sessions.save(session),
        "sessions.delete": lambda: store.sessions.delete(session.id),
        "messages.create": lambda: store.messages.create(session.id, role=Role.USER),
        "messages.update (terminal)": terminal_update,
        "messages.flush": lambda: store.messages.flush(message.id),
        "messages.flush_all": store.messages.flush_all,
        "messages.delete": lambda: store.messages.delete(message.id),
        "messages.delete_session_messages": lambda: store.messages.delete_session_messages(
            session.id
        ),
    }


async def writes_refused(
    store: Store, session: Session, message: Message, name: str, cause: BaseException | None
) -> None:
    """Every kind of write raises ``BackgroundTaskFailed`` naming loop ``name``, at once."""
    for what, call in every_write(store, session, message).items():
        async with asyncio.timeout(WAIT):
            with pytest.raises(BackgroundTaskFailed) as caught:
                await call()
        assert caught.value.loop == name, what
        assert name in str(caught.value), what
        if cause is not None:
            assert caught.value.__cause__ is cause, what


# -- the store's own loops ---------------------------------------------------------------------


async def test_the_store_runs_its_loops_under_one_owner(opened: Opened) -> None:
    store = opened.store
    assert loops(store) == STORE_LOOPS
    async with store.messages.subscribe():
        assert loops(store) == STORE_LOOPS + FEED_LOOPS
    async with asyncio.timeout(WAIT):  # the last subscription's end stops the feed's loops
        while loops(store) != STORE_LOOPS:  # noqa: ASYNC110 (a stop is one loop iteration)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("name", STORE_LOOPS + FEED_LOOPS)
async def test_a_dead_loop_is_logged_and_writes_fail_fast(
    opened: Opened, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = opened.store
    session, message = await some_data(store)
    message.append_text("buffered before the loop died")
    await store.messages.update(message)
    async with store.messages.subscribe() as sub:  # the feed's loops run
        boom = RuntimeError(f"bug in {name}")
        with caplog.at_level(logging.ERROR, logger="messagestore"):
            async with asyncio.timeout(WAIT):
                await break_loop(store, name, boom)
        logged = deaths(caplog, name)
        assert len(logged) == 1, [r.getMessage() for r in caplog.records]
        assert "bug in" in logged[0].getMessage()
        assert logged[0].exc_info is not None and logged[0].exc_info[1] is boom
        assert name not in loops(store)
        await writes_refused(store, session, message, name, boom)
        # Reads go on, and a streamed (buffered) update is still accepted.
        assert (await store.messages.get(message.id)).id == message.id
        message.append_text(", and after")
        await store.messages.update(message)
        sub.close()
    async with asyncio.timeout(WAIT):
        await store.close()  # closes, and still writes what is buffered
    await nothing_left(opened)
    no_unretrieved(caplog)
    async with open_store(store.url) as again:
        assert (await again.messages.get(message.id)).text == (
            "buffered before the loop died, and after"
        )
        assert [s.id for s in await again.sessions.list()] == [session.id]


async def test_a_loop_that_returns_or_is_cancelled_by_another_counts_as_dead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor("test")
    never = asyncio.Event()

    async def returns() -> None:
        await asyncio.sleep(0)

    async def waits() -> None:
        await never.wait()

    with caplog.at_level(logging.WARNING, logger="messagestore"):
        returned = supervisor.start("returns", returns)
        await asyncio.wait([returned.task])
        with pytest.raises(BackgroundTaskFailed, match="'returns' returned") as caught:
            supervisor.check()
        assert caught.value.__cause__ is None
        other = Supervisor("other")
        cancelled = other.start("waits", waits)
        await asyncio.sleep(0)
        cancelled.task.cancel()  # not by its owner (a loop shutting down, say)
        await asyncio.wait([cancelled.task])
        with pytest.raises(BackgroundTaskFailed, match="cancelled by something other"):
            other.check()
    assert len(deaths(caplog, "returns")) == 1
    # Mostly an event loop shutting down with the store open: a warning, not an error.
    warned = [r for r in caplog.records if "'waits' was cancelled" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING]
    await supervisor.stop()
    await other.stop()


async def test_a_non_essential_loop_is_logged_but_refuses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor("test")

    async def fails() -> None:
        raise ValueError("not essential")

    with caplog.at_level(logging.ERROR, logger="messagestore"):
        loop = supervisor.start("optional", fails, essential=False)
        await asyncio.wait([loop.task])
    assert len(deaths(caplog, "optional")) == 1
    supervisor.check()  # nothing refused
    assert [f.loop for f in supervisor.failures] == ["optional"]
    await supervisor.stop()
    assert not loop.task.cancelled() and loop.task.exception() is None  # nothing unretrieved


async def test_stop_is_in_reverse_start_order_with_each_loops_grace() -> None:
    supervisor = Supervisor("test")
    ended: list[str] = []
    in_flight = asyncio.Event()
    finish = asyncio.Event()

    def plain(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                ended.append(name)

        return run

    async def graceful() -> None:
        # Asked to stop mid-way through some work: finishes it within its grace, then ends.
        in_flight.set()
        await finish.wait()
        await asyncio.sleep(0.01)
        ended.append("graceful")

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # ignores the request: cancelled after its grace
        finally:
            ended.append("stuck")

    supervisor.start("first", plain("first"))
    supervisor.start("graceful", graceful, on_stop=finish.set, grace=WAIT)
    supervisor.start("stuck", stuck, on_stop=lambda: None, grace=0.01)
    supervisor.start("last", plain("last"))
    await in_flight.wait()
    async with asyncio.timeout(WAIT):
        await supervisor.stop()
        await supervisor.stop()  # idempotent
    assert ended == ["last", "stuck", "graceful", "first"]
    assert supervisor.loops == ()
    supervisor.check()  # stopping is no failure
    with pytest.raises(RuntimeError, match="stopped"):
        supervisor.start("late", plain("late"))


async def test_close_stops_the_store_loops_newest_first(
    opened: Opened, caplog: pytest.LogCaptureFixture
) -> None:
    store = opened.store
    sub = store.messages.subscribe()
    started = loops(store)
    assert started == STORE_LOOPS + FEED_LOOPS
    with caplog.at_level(logging.DEBUG, logger="messagestore"):
        async with asyncio.timeout(WAIT):
            await store.close()
    stopped = [
        found.group(1)
        for r in caplog.records
        if (
            found := re.fullmatch(
                r"messagestore: the store's background loop '(.*)' stopped", r.getMessage()
            )
        )
    ]
    assert stopped == list(reversed(started))
    sub.close()
    await nothing_left(opened)
    no_unretrieved(caplog)


async def test_a_write_in_flight_when_the_feed_dies_does_not_hang(opened: Opened) -> None:
    """A commit held for the feed's reader (which is stalled reading) is published when the
    reader dies, so the write waiting for it returns."""
    store = opened.store
    session = await store.sessions.create("held")
    stall = faults(store).stall_next(kind="read")  # the feed's first read
    sub = store.messages.subscribe()
    async with asyncio.timeout(WAIT):
        await stall.started()
    creating = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
    await asyncio.sleep(0)  # submitted: its commit is held until the feed reads its horizon
    async with asyncio.timeout(WAIT):
        await break_loop(store, "feed")
        created = await creating
    with pytest.raises(BackgroundTaskFailed, match="'feed'"):
        await store.messages.create(session.id, role=Role.USER)
    stall.release()
    assert [m.id for m in await store.messages.list(session.id)] == [created.id]
    sub.close()


# -- the database's workers --------------------------------------------------------------------


def writer_name(store: Store) -> str:
    return "sqlite-writer" if store.url.startswith("sqlite") else "postgresql-writer"


async def test_a_dead_database_writer_fails_its_queue_and_every_later_write(
    opened: Opened, caplog: pytest.LogCaptureFixture
) -> None:
    store = opened.store
    session, message = await some_data(store)
    plan = faults(store)
    stall = plan.stall_next(kind="write")
    crash = plan.crash_next(kind="write", error=RuntimeError("writer bug"))
    with caplog.at_level(logging.ERROR, logger="messagestore"):
        held = asyncio.create_task(store.sessions.create("held by a stall"))
        async with asyncio.timeout(WAIT):
            await stall.started()
        crashing = asyncio.create_task(store.sessions.create("its worker dies"))
        queued = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
        await asyncio.sleep(0)  # both submitted behind the stalled job
        stall.release()
        async with asyncio.timeout(WAIT):
            await held  # it ran before the crash
            for task in (crashing, queued):
                with pytest.raises(BackgroundTaskFailed) as caught:
                    await task
                assert caught.value.loop == writer_name(store)
                assert caught.value.owner == "database"
                assert str(caught.value.__cause__) == "writer bug"
    assert crash.crashed
    assert len(deaths(caplog, writer_name(store))) == 1
    await writes_refused(store, session, message, writer_name(store), crash.error)
    assert len(await store.sessions.list()) == 2  # reads go on
    message.append_text("never written")
    await store.messages.update(message)  # buffered: nothing can write it
    async with asyncio.timeout(WAIT):
        with pytest.raises(MessageStoreError):
            await store.close()
    assert store.closed
    await nothing_left(opened)
    no_unretrieved(caplog)


@pytest.mark.parametrize("kind", ["write", "read"])
async def test_a_dead_sqlite_thread_is_noticed(
    sqlite_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("threads")
        crash = faults(store).crash_next(kind=kind)  # type: ignore[arg-type]

        async def job() -> object:
            if kind == "write":
                return await store.sessions.create("a write")
            return await store.sessions.get(session.id)

        with caplog.at_level(logging.ERROR, logger="messagestore"):
            async with asyncio.timeout(WAIT):
                with pytest.raises(BackgroundTaskFailed, match=f"sqlite-{kind[0]}") as caught:
                    await job()  # its thread dies taking it
        assert crash.crashed and caught.value.owner == "database"
        assert len([r for r in caplog.records if "sqlite-" in r.getMessage()]) == 1
        async with asyncio.timeout(WAIT):
            with pytest.raises(BackgroundTaskFailed):  # its kind of job is refused from now on
                await job()
            with pytest.raises(BackgroundTaskFailed):  # and the store refuses writes
                await store.messages.flush_all()
    threads = [t.name for t in threading.enumerate() if t.name.startswith("ms-sqlite")]
    assert not threads, threads


async def test_postgres_reads_have_no_worker_to_crash(postgres_url: str) -> None:
    async with open_store(postgres_url) as store:
        with pytest.raises(ValueError, match="no worker"):
            faults(store).crash_next(kind="read")


async def test_breaking_an_unknown_loop_names_the_running_ones(opened: Opened) -> None:
    with pytest.raises(LookupError, match="'flusher'"):
        await break_loop(opened.store, "no-such-loop")
    with pytest.raises(TypeError):
        loops(object())  # type: ignore[arg-type]
