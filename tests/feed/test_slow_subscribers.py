"""Slow subscribers: one that falls behind still ends on the newest state (it learns the
message finished), and the flusher's tick never waits for any subscriber.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from messagestore import (
    FinishReason,
    Role,
    WriteFailed,
    batch_written,
)
from messagestore.testing import faults, set_must_deliver_timeout
from tests.support.races import (
    bounded,
    drain,
    last_events,
    opened,
)


async def test_a_slow_subscriber_still_learns_the_message_finished(db_url: str) -> None:
    """When the terminal event had to wait for room in a slow subscriber, the held
    newest state was discarded and, after the 50 ms bound, the terminal event too: the UI
    showed an unfinished message forever. The late terminal event now stays queued (and still
    counts as a must-deliver drop)."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("slow reader")
        sub = store.messages.subscribe(buffer_size=1)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)  # fills it
        for n in range(5):
            message.append_text(f"token {n} ")
            await store.messages.update(message)
            await store.messages.flush(message.id)
        message.add_finish(FinishReason.END_TURN)
        async with bounded("the terminal update (bounded by must_deliver_timeout)"):
            await store.messages.update(message)
        assert store.messages.stats().broker.must_deliver_dropped >= 1
        stored = await store.messages.get(message.id)
    events = await drain(sub)
    assert events, "the slow subscriber received nothing"
    final = last_events(events)[message.id]
    assert final.payload.is_finished, f"ended on {final.type} {final.payload.text!r}"
    assert final.payload == stored


async def test_a_tick_with_a_terminal_state_waits_for_no_subscriber(
    db_url: str,
) -> None:
    """A flusher tick that writes a terminal state (a terminal write that failed
    and is retried by the timer) waited for slow subscribers and delayed every other message.
    Here a stuck subscriber would hold such a tick for a minute; the next tick must still
    write the other message."""
    async with opened(db_url, debounce=0.01) as store:
        set_must_deliver_timeout(store, 60)
        session = await store.sessions.create("tick")
        finishing, streaming = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"
        ]
        stuck = store.messages.subscribe(buffer_size=1)
        await store.messages.create(session.id, role=Role.USER)  # fills the stuck buffer
        faults(store).fail_next(
            kind="write", error=sqlite3.OperationalError("disk I/O error (injected)")
        )
        written = asyncio.Event()

        def on_batch(sender: object, **kwargs: Any) -> None:
            written.set()

        batch_written.connect(on_batch)
        try:
            finishing.add_finish(FinishReason.END_TURN)
            with pytest.raises(WriteFailed):
                await store.messages.update(finishing)  # kept; the timer retries it
            async with bounded("the timer's retry of the terminal state"):
                while True:
                    written.clear()  # before the read: a commit during it is not missed
                    if (await store.messages.get(finishing.id)).is_finished:
                        break
                    await written.wait()
            streaming.append_text("next tick")
            await store.messages.update(streaming)
            async with bounded("the next tick, behind a stuck subscriber"):
                while True:
                    written.clear()
                    if (await store.messages.get(streaming.id)).text == "next tick":
                        break
                    await written.wait()
        finally:
            batch_written.disconnect(on_batch)
        stuck.close()
