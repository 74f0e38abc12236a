"""One owner of a dispatcher's background work: a poll that dies is logged and ``submit``
then fails fast naming it; a store whose loops died refuses the dispatcher's writes too; and
closing leaves no task behind. SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from messagestore import BackgroundTaskFailed, Store
from messagestore.dispatch import Dispatcher, QueueConfig, TurnOutcome
from messagestore.testing import break_loop, loops
from tests.support.dispatch_helpers import WAIT, Agent

FAST = QueueConfig(debounce=0.01, max_wait=0.5)


async def test_a_dead_poll_is_logged_and_submit_fails_fast(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = asyncio.all_tasks()
    agent = Agent()
    session = await store.sessions.create("poll dies")
    dispatcher = Dispatcher(store, agent, FAST, poll_interval=0.05)
    await dispatcher.start()
    try:
        assert loops(dispatcher) == ["dispatch-poller"]
        first = await dispatcher.submit(session.id, "before")
        async with asyncio.timeout(WAIT):
            assert await first.outcome() is TurnOutcome.COMPLETED
        boom = RuntimeError("bug in the poll")
        with caplog.at_level(logging.ERROR, logger="messagestore"):
            async with asyncio.timeout(WAIT):
                await break_loop(dispatcher, "dispatch-poller", boom)
        logged = [r for r in caplog.records if "'dispatch-poller'" in r.getMessage()]
        assert len(logged) == 1 and "dispatcher's background loop" in logged[0].getMessage()
        assert loops(dispatcher) == []
        for call in (
            lambda: dispatcher.submit(session.id, "refused"),
            lambda: dispatcher.route("chat:1"),
        ):
            async with asyncio.timeout(WAIT):
                with pytest.raises(BackgroundTaskFailed) as caught:
                    await call()
            assert caught.value.loop == "dispatch-poller"
            assert caught.value.owner == "dispatcher"
            assert caught.value.__cause__ is boom
        assert await dispatcher.stop(session.id) is False  # stopping work still works
        await store.sessions.create("the store itself is fine")
    finally:
        async with asyncio.timeout(WAIT):
            await dispatcher.close()
    gc.collect()
    mine = ("messagestore-dispatch", "messagestore-turn", "messagestore-run-turn")
    left = [t for t in asyncio.all_tasks() - tasks if t.get_name().startswith(mine)]
    assert not left, f"tasks left after close: {left}"
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_dead_store_loop_refuses_the_dispatchers_writes(store: Store) -> None:
    session = await store.sessions.create("store loop dies")
    async with Dispatcher(store, Agent(), FAST, poll_interval=0.05) as dispatcher:
        await break_loop(store, "lease-heartbeat")
        async with asyncio.timeout(WAIT):
            with pytest.raises(BackgroundTaskFailed, match="'lease-heartbeat'"):
                await dispatcher.submit(session.id, "refused")


async def test_close_stops_the_poll_and_the_store_closing_ends_it(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    async with Dispatcher(store, Agent(), FAST, poll_interval=0.05) as dispatcher:
        assert loops(dispatcher) == ["dispatch-poller"]
    assert loops(dispatcher) == []
    other = Dispatcher(store, Agent(), FAST, poll_interval=0.05)
    await other.start()
    with caplog.at_level(logging.ERROR, logger="messagestore"):
        async with asyncio.timeout(WAIT):
            await store.close()  # the poll ends by itself: that is no death
            await other.close()
    assert loops(other) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
