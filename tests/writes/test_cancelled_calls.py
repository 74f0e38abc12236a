"""A caller that is cancelled only stops waiting: no transaction is left open, no
error is left unretrieved, and a change it started is still stored and announced.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import Awaitable
from typing import Any

import pytest

from messagestore import (
    FinishReason,
    Role,
    Text,
    batch_written,
)
from messagestore.testing import set_must_deliver_timeout
from pubsub import EventType
from tests.support.races import (
    assert_counts_match_rows,
    assert_no_write_lock_held,
    bounded,
    cancel_at_random,
    drain,
    last_events,
    opened,
)


async def test_a_cancelled_write_never_leaves_the_database_locked(db_url: str) -> None:
    """Cancelling ``delete()``, ``create()``, ``sessions.save()`` or a terminal
    ``update()`` at a random point left (now and then) a SQLite connection inside ``BEGIN
    IMMEDIATE``: the next write waited out the 30 s busy timeout, and so did ``close()``."""
    rng = random.Random(20260101)
    store = await opened(db_url, debounce=0.01)
    try:
        session = await store.sessions.create("cancelled calls")
        for trial in range(80):
            async with bounded(f"a create after {trial} cancelled calls (database locked?)", 5):
                victim = await store.messages.create(session.id, role=Role.ASSISTANT)
            kind = trial % 4
            call: Awaitable[Any]
            if kind == 0:
                call = store.messages.delete(victim.id)
            elif kind == 1:
                call = store.messages.create(session.id, role=Role.USER, parts=[Text("c")])
            elif kind == 2:
                session.title = f"renamed {trial}"
                call = store.sessions.save(session)
            else:
                victim.append_text("done")
                victim.add_finish(FinishReason.END_TURN)
                call = store.messages.update(victim)
            await cancel_at_random(rng, call)
        async with bounded("a write after the cancelled calls (database locked?)", 5):
            after = await store.sessions.create("after the cancellations")
            await store.messages.create(after.id, role=Role.USER, parts=[Text("ok")])
        await assert_no_write_lock_held(db_url)
        await assert_counts_match_rows(store)
    finally:
        async with bounded("close()", 5):
            await store.close()
    await assert_no_write_lock_held(db_url)


async def test_a_cancelled_call_whose_job_fails_leaves_no_unretrieved_error(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the model test: a call cancelled while its job was queued, whose job
    then failed (a create in a session deleted meanwhile), left asyncio logging "Future exception
    was never retrieved": nobody was left to take the error."""
    async with opened(db_url) as store:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(5):
                call = asyncio.ensure_future(
                    store.messages.create("no such session", role=Role.USER)
                )
                await asyncio.sleep(0)  # its job is queued
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
            await store.sessions.create("barrier")  # the failed jobs are done
            del call
            gc.collect()
        assert "never retrieved" not in caplog.text


async def test_a_cancelled_terminal_update_is_still_announced(db_url: str) -> None:
    """Cancelling a terminal ``update()`` while it waited for a slow subscriber
    withdrew the event: the write was durable but the subscriber never heard of it."""
    async with opened(db_url, debounce=60) as store:
        set_must_deliver_timeout(store, 30)  # the update waits until cancelled
        session = await store.sessions.create("cancelled announcement")
        sub = store.messages.subscribe(buffer_size=1)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)  # fills it
        committed = asyncio.Event()

        def on_batch(sender: object, **kwargs: Any) -> None:
            if kwargs["terminal"]:
                committed.set()

        batch_written.connect(on_batch)
        try:
            message.append_text("the answer")
            message.add_finish(FinishReason.END_TURN)
            terminal = asyncio.ensure_future(store.messages.update(message))
            async with bounded("the terminal write"):
                await committed.wait()
            for _ in range(5):  # let it reach its wait for the slow subscriber
                await asyncio.sleep(0)
            assert not terminal.done(), "the update did not wait for the slow subscriber"
            terminal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await terminal
        finally:
            batch_written.disconnect(on_batch)
        stored = await store.messages.get(message.id)
        assert stored.is_finished
    events = await drain(sub)
    final = last_events(events)[message.id]
    assert final.payload.is_finished, f"ended on {final.type} {final.payload.text!r}"
    assert final.payload == stored


async def test_a_cancelled_create_is_still_announced(db_url: str) -> None:
    """A ``create()`` cancelled after its commit left a row with no ``CREATED``
    event. Every row a cancelled create leaves must be announced."""
    rng = random.Random(4)
    async with opened(db_url) as store:
        session = await store.sessions.create("cancelled creates")
        sub = store.messages.subscribe(buffer_size=10_000)
        for _ in range(40):
            await cancel_at_random(
                rng, store.messages.create(session.id, role=Role.USER, parts=[Text("c")])
            )
        await store.sessions.create("barrier")  # writes run in order: the creates are done
        rows = await store.messages.list(session.id)
        assert (await store.sessions.get(session.id)).message_count == len(rows)
    events = await drain(sub)
    announced = {e.payload.id for e in events if e.type is EventType.CREATED}
    assert rows, "no create committed: the test cancelled too early to check anything"
    missing = {m.id for m in rows} - announced
    assert not missing, f"{len(missing)} of {len(rows)} created rows were never announced"
