"""The recovery sweep beside live traffic: its repairs never follow a ``DELETED`` of the same
message, and it reads only unfinished messages.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio

from messagestore import (
    FinishReason,
    Message,
    Role,
    Text,
)
from messagestore.testing import set_must_deliver_timeout
from pubsub import Event, EventType
from tests.support.races import (
    assert_nothing_after_deleted,
    bounded,
    drain,
    last_events,
    opened,
)


async def leave_streaming(url: str, count: int) -> list[Message]:
    """Messages a store left streaming when it closed (its lease ended): the sweep's work."""
    async with opened(url) as gone:
        session = await gone.sessions.create("left streaming")
        left = []
        for n in range(count):
            message = await gone.messages.create(session.id, role=Role.ASSISTANT)
            message.append_text(f"half an answer {n}")
            await gone.messages.update(message)
            left.append(message)
        await gone.messages.flush_all()
    return left


async def test_a_recovery_repair_never_follows_deleted(db_url: str) -> None:
    """``recover()`` published its repairs after the sweep, outside the per-message
    order; a delete landing meanwhile gave subscribers ``DELETED(m)`` then ``UPDATED(m)``.
    Here a slow subscriber holds the repair announcements back while ``m`` is deleted."""
    async with opened(db_url) as store:
        set_must_deliver_timeout(store, 1.0)
        slow = store.messages.subscribe(buffer_size=1)
        watch = store.messages.subscribe(buffer_size=10_000)
        first, second = await leave_streaming(db_url, 2)
        mine = await store.sessions.create("mine")
        await store.messages.create(mine.id, role=Role.USER)  # fills the slow buffer
        recovery = asyncio.ensure_future(store.recover())
        early: list[Event[Message]] = []  # what ``watch`` heard before the delete
        async with bounded("the sweep"):  # committed: its repair reaches the roomy reader
            while not any(e.payload.id == first.id and e.payload.is_finished for e in early):
                early.append(await watch.receive())
        async with bounded("the delete"):
            await store.messages.delete(second.id)
        async with bounded("recover()"):
            report = await recovery
        assert report.messages_interrupted == 2
        repaired = await store.messages.get(first.id)
        assert repaired.finish is not None
    for sub, before in ((watch, early), (slow, [])):
        events = before + await drain(sub)
        assert_nothing_after_deleted(events)
        last = last_events(events)
        assert last[second.id].type is EventType.DELETED
        assert last[first.id].payload == repaired


async def test_the_sweep_reads_only_unfinished_messages(db_url: str) -> None:
    """The first open after a close rewrote ``writer_id`` on every row the closed
    store had ever written, in one write transaction (0.72 s holding the write lock at 100k
    rows). The sweep now checks only the messages still in progress: its cost follows the
    unfinished messages, not the history."""
    async with opened(db_url) as survivor:
        async with opened(db_url) as writer:
            session = await writer.sessions.create("history")
            for n in range(60):
                await writer.messages.create(session.id, role=Role.USER, parts=[Text(f"q{n}")])
                answer = await writer.messages.create(session.id, role=Role.ASSISTANT)
                answer.append_text(f"a{n}")
                answer.add_finish(FinishReason.END_TURN)
                await writer.messages.update(answer)
            for n in range(2):
                streaming = await writer.messages.create(session.id, role=Role.ASSISTANT)
                streaming.append_text(f"cut off {n}")
                await writer.messages.update(streaming)
        report = await survivor.recover()  # the writer closed: its lease ended
        assert report.messages_interrupted == 2
        assert report.messages_checked == 2, f"checked {report.messages_checked} rows of 122"
        assert await survivor.recover() == type(report)()  # nothing left to look at
