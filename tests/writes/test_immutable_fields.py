"""The fields a row keeps for life (``session_id``, ``role``, ``created_at``): a change of
one is refused and never announced, also after the buffer released the message, while its
first write is in flight, and in a store that never saw the message.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    Role,
    WriteFailed,
)
from tests.support.races import (
    bounded,
    drain,
    last_events,
    opened,
)
from tests.writes.test_update_contract import WriteLock


async def test_immutable_fields_are_refused_and_the_rest_are_stored(db_url: str) -> None:
    """``update()`` accepted a changed ``role`` or ``session_id`` (and
    ``is_summary_message``, ``created_at``): the event announced the new value, the row kept
    the old one. Now the fields the row keeps for life are refused with ``InvalidMessage``,
    the others are stored, and the event always equals the row."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("immutable")
        elsewhere = await store.sessions.create("elsewhere")
        sub = store.messages.subscribe(buffer_size=10_000)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        refused = {
            "role": Role.USER,
            "session_id": elsewhere.id,
            "created_at": message.created_at - timedelta(days=1),
        }
        for field, value in refused.items():
            changed = message.clone()
            setattr(changed, field, value)
            with pytest.raises(InvalidMessage, match=field):
                await store.messages.update(changed)
        stored = {"is_summary_message": True, "model": "model-2", "provider": "provider-2"}
        for field, value in stored.items():
            setattr(message, field, value)
            message.append_text(f"{field} ")
            await store.messages.update(message)
            async with bounded("flush"):
                await store.messages.flush(message.id)
            assert getattr(await store.messages.get(message.id), field) == value
        row = await store.messages.get(message.id)
        assert (row.role, row.session_id, row.created_at) == (
            Role.ASSISTANT,
            session.id,
            message.created_at,
        )
        assert await store.messages.list(elsewhere.id) == []
    events = await drain(sub)
    assert events
    for event in events:
        assert event.payload.role is Role.ASSISTANT
        assert event.payload.session_id == session.id
        assert event.payload.created_at == message.created_at
    assert last_events(events)[message.id].payload == row


@pytest.mark.parametrize("released_by", ["no debounce", "finish"])
async def test_immutable_fields_are_refused_after_the_buffer_released_the_message(
    db_url: str, released_by: str
) -> None:
    """Once the write path has let go of the message (``debounce=0`` releases it
    after every write, a finished message is released after its write): a changed ``role``
    or ``session_id`` was accepted as a new entry, announced, and never stored."""
    async with opened(db_url, debounce=0 if released_by == "no debounce" else 60) as store:
        session = await store.sessions.create("released")
        elsewhere = await store.sessions.create("elsewhere")
        sub = store.messages.subscribe(buffer_size=10_000)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("written")
        if released_by == "finish":
            message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        assert store.messages.stats().buffered_messages == 0  # released
        for field, value in {"role": Role.USER, "session_id": elsewhere.id}.items():
            changed = message.clone()
            setattr(changed, field, value)
            with pytest.raises(InvalidMessage, match=field):
                await store.messages.update(changed)
        async with bounded("flush_all"):
            await store.messages.flush_all()
        row = await store.messages.get(message.id)
        assert (row.role, row.session_id) == (Role.ASSISTANT, session.id)
    events = await drain(sub)
    assert all(e.payload.role is Role.ASSISTANT for e in events), events
    assert last_events(events)[message.id].payload == row


async def test_immutable_fields_are_refused_while_the_first_write_is_in_flight(
    db_url: str,
) -> None:
    """Found by the model test: while the first write of a message the buffer held
    no written state for was in flight, nothing was left to compare with, and an update
    changing ``role`` was accepted."""
    async with opened(db_url, debounce=0) as store:
        session = await store.sessions.create("in flight")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("written")
        await store.messages.update(message)  # released (no debounce)
        async with WriteLock(db_url, message.id):
            message.append_text(", then held")
            first = asyncio.ensure_future(store.messages.update(message))
            await asyncio.sleep(0)  # accepted, its write waits for the lock
            assert not first.done()
            changed = message.clone()
            changed.role = Role.USER
            async with bounded("update() with a changed role (accepted, then held?)", 3):
                with pytest.raises(InvalidMessage, match="role"):
                    await store.messages.update(changed)
        async with bounded("the first write"):
            await first
        assert (await store.messages.get(message.id)).role is Role.ASSISTANT


@pytest.mark.parametrize("debounce", [0, 60])
async def test_a_store_that_never_saw_the_message_never_announces_a_changed_role(
    db_url: str, debounce: float
) -> None:
    """For a message this store never saw (another process created it): nothing in
    memory says what its row keeps for life, so the write itself must check; an update that
    changes ``role`` is refused (its flush raises ``WriteFailed`` naming the field), nothing
    is announced, and the store takes the stored value as the truth from then on."""
    async with opened(db_url) as creator, opened(db_url, debounce=debounce) as store:
        session = await creator.sessions.create("foreign")
        message = await creator.messages.create(session.id, role=Role.ASSISTANT)
        sub = store.messages.subscribe(buffer_size=10_000)
        changed = message.clone()
        changed.role = Role.USER
        changed.append_text("wrong role")

        async def write(state: Message) -> None:
            await store.messages.update(state)
            await store.messages.flush(state.id)

        async with bounded("the refused write"):
            with pytest.raises(WriteFailed, match="role"):
                await write(changed)
        with pytest.raises(InvalidMessage, match="role"):  # known now: refused at once
            await store.messages.update(changed)
        message.append_text("right role")
        async with bounded("the right state's write"):
            await write(message)
        row = await store.messages.get(message.id)
        assert (row.role, row.text) == (Role.ASSISTANT, "right role")
    events = await drain(sub)
    assert all(e.payload.role is Role.ASSISTANT for e in events), events
    assert last_events(events)[message.id].payload == row
