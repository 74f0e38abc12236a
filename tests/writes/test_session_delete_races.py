"""Deletes racing writes: a create racing its session's delete fails or is reported, rows
deleted by another process are reported (never a failed close), and a recovery sweep and
a session delete in two processes never deadlock.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest

from messagestore import (
    MessageNotFound,
    Role,
    SessionNotFound,
    Text,
    ToolCall,
)
from pubsub import EventType
from tests.support.races import (
    assert_counts_match_rows,
    bounded,
    opened,
    yield_randomly,
)


async def test_a_create_racing_its_sessions_delete_fails_or_is_reported(
    db_url: str,
) -> None:
    """With ``create()`` racing ``sessions.delete()`` (PostgreSQL, about one trial in
    eight), ``create()`` returned and announced ``CREATED``, then the row died in the foreign
    key cascade and no ``DELETED`` reported it. Now the create fails with ``SessionNotFound``
    or the delete reports the row. The deleting store stands for a second process."""
    rng = random.Random(3)
    async with opened(db_url) as creator, opened(db_url) as deleter:
        async with deleter.messages.subscribe(buffer_size=10_000) as deletions:
            created: list[str] = []
            refused = 0
            for trial in range(40):
                session = await creator.sessions.create(f"race {trial}")
                await creator.messages.create(session.id, role=Role.USER, parts=[Text("first")])

                async def create(session_id: str = session.id) -> None:
                    nonlocal refused
                    await yield_randomly(rng)
                    try:
                        message = await creator.messages.create(
                            session_id, role=Role.USER, parts=[Text("racing")]
                        )
                    except SessionNotFound:
                        refused += 1
                    else:
                        created.append(message.id)

                async with bounded(f"trial {trial}"):
                    await asyncio.gather(create(), create(), deleter.sessions.delete(session.id))
            # A last delete of the deleting store: its event comes after all the others.
            last = await creator.sessions.create("sentinel")
            sentinel = await creator.messages.create(last.id, role=Role.USER)
            await deleter.messages.delete(sentinel.id)
            reported: set[str] = set()
            async with bounded("the DELETED events"):
                while True:
                    event = await deletions.receive()
                    if event.payload.id == sentinel.id:
                        break
                    if event.type is EventType.DELETED:
                        reported.add(event.payload.id)
            vanished = set(created) - reported
            assert not vanished, f"{len(vanished)} of {len(created)} created rows vanished unseen"
        for message_id in created:
            with pytest.raises(MessageNotFound):
                await creator.messages.get(message_id)
    assert created and refused, (len(created), refused)  # both outcomes happened


async def test_rows_deleted_elsewhere_are_reported_and_close_still_closes(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``close()`` raised ``MessageNotFound`` when another process had deleted a
    message this store was streaming, so leaving ``async with open_store()`` raised; and
    ``flush_all()`` named only the first missing id."""
    async with opened(db_url) as other:
        async with opened(db_url, debounce=60) as store:
            session = await store.sessions.create("deleted elsewhere")
            messages = [
                await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(3)
            ]
            for message in messages:
                message.append_text("buffered")
                await store.messages.update(message)
            for message in messages[:2]:
                await other.messages.delete(message.id)
            async with bounded("flush_all"):
                with pytest.raises(MessageNotFound) as caught:
                    await store.messages.flush_all()
            assert set(caught.value.message_ids) == {m.id for m in messages[:2]}
            assert (await store.messages.get(messages[2].id)).text == "buffered"
            last = messages[2]
            last.append_text(" and more")
            await store.messages.update(last)
            await other.messages.delete(last.id)
            with caplog.at_level(logging.WARNING, logger="messagestore"):
                async with bounded("close"):
                    await store.close()  # must not raise
        assert store.closed
        assert last.id in caplog.text


async def test_a_row_this_store_deleted_is_never_reported_as_deleted_elsewhere(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the model test: an ``update()`` of a released message (``debounce=0``
    releases after every write) racing this store's own ``delete()`` was written after the
    delete; the write found no row and the next ``flush_all()`` raised ``MessageNotFound``, as
    if another process had deleted it (and ``close()`` logged it so)."""
    async with opened(db_url, debounce=0) as store:
        session = await store.sessions.create("own delete")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("written, then released")
        await store.messages.update(message)
        deleting = asyncio.ensure_future(store.messages.delete(message.id))
        await asyncio.sleep(0)  # the delete is submitted
        message.append_text(" and a late delta")
        with contextlib.suppress(MessageNotFound):  # refused, or written to no row
            await store.messages.update(message)
        async with bounded("the delete"):
            await deleting
        async with bounded("flush_all"):
            await store.messages.flush_all()  # nothing was deleted by anyone else
        with caplog.at_level(logging.WARNING, logger="messagestore"):
            await store.close()
        assert "another process" not in caplog.text


async def test_a_sweep_and_a_session_delete_elsewhere_never_deadlock(
    db_url: str,
) -> None:
    """A recovery sweep in one process and ``sessions.delete`` in
    another could deadlock (the sweep locks leases, then messages, then sessions; the delete
    locks messages, then the session). Every write job now takes the revision counter first."""
    async with opened(db_url) as sweeper, opened(db_url) as deleter:
        for trial in range(4):
            async with opened(db_url) as gone:
                sessions = [await gone.sessions.create(f"trial {trial}") for _ in range(3)]
                for session in sessions:
                    for n in range(3):
                        message = await gone.messages.create(session.id, role=Role.ASSISTANT)
                        message.append_text("calling")
                        message.add_tool_call(ToolCall(f"c{n}", "tool", "{}", finished=True))
                        await gone.messages.update(message)
            async with bounded(f"trial {trial}"):
                report, *_ = await asyncio.gather(
                    sweeper.recover(),
                    *(deleter.sessions.delete(s.id) for s in sessions[:2]),
                )
            # The third session's three, and those of the deleted ones if it came first.
            assert report.messages_interrupted in (3, 6, 9)
            kept = await sweeper.messages.list(sessions[2].id)
            assert all(m.role is Role.TOOL or m.is_finished for m in kept)
            await assert_counts_match_rows(sweeper)
