"""Every wait of the write path ends, and nothing is held for good.

A terminal ``update()`` of a message another store (process) deleted raises
``MessageNotFound`` instead of returning as if it were stored; with ``debounce=0`` the buffer
holds nothing once a write (or a create) has returned; a store that only creates messages
releases them after ``idle_release``. Every store test runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from messagestore import (
    FinishReason,
    InvalidMessage,
    MessageNotFound,
    Role,
    Text,
    ToolCall,
    open_store,
)
from messagestore._store import StoreOptions, open_store_with

WAIT = 10.0  # the bound of every wait


async def until(condition: Callable[[], bool], what: str, seconds: float = WAIT) -> None:
    """Wait (bounded) for ``condition``, which only a background task can make true and
    which nothing signals (a release inside a flusher tick): poll it."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


# -- a terminal update of a message deleted elsewhere ---------------------------------------------


@pytest.mark.parametrize("debounce", [0.033, 0.0])
async def test_terminal_update_of_a_message_deleted_elsewhere_raises(
    db_url: str, debounce: float
) -> None:
    async with (
        open_store_with(db_url, StoreOptions(debounce=debounce)) as writer,
        open_store(db_url) as other,
    ):
        session = await writer.sessions.create("deleted under the writer")
        reply = await writer.messages.create(session.id, role=Role.ASSISTANT)
        reply.append_text("streaming ")
        await writer.messages.update(reply)
        await writer.messages.flush(reply.id)
        await other.messages.delete(reply.id)
        reply.append_text("and done")
        reply.add_finish(FinishReason.END_TURN)
        with pytest.raises(MessageNotFound) as raised:
            await writer.messages.update(reply)
        assert raised.value.message_id == reply.id
        with pytest.raises(MessageNotFound):
            await writer.messages.update(reply)  # and from now on, at once
        await writer.messages.flush_all()  # reported once, by the update: nothing left
        assert await other.messages.list(session.id) == []


async def test_a_tool_call_added_to_a_message_deleted_elsewhere_raises(db_url: str) -> None:
    """Adding a tool call is terminal too (written before ``update()`` returns)."""
    async with open_store(db_url) as writer, open_store(db_url) as other:
        session = await writer.sessions.create("tool call on a deleted message")
        reply = await writer.messages.create(session.id, role=Role.ASSISTANT)
        await other.messages.delete(reply.id)
        reply.add_tool_call(ToolCall("c1", "grep", "{}"))
        with pytest.raises(MessageNotFound):
            await writer.messages.update(reply)


async def test_concurrent_terminal_updates_of_a_message_deleted_elsewhere_all_raise(
    db_url: str,
) -> None:
    """Two terminal updates, the second queued behind the first's write: both are told."""
    async with open_store(db_url) as writer, open_store(db_url) as other:
        session = await writer.sessions.create("two writers, one vanished row")
        reply = await writer.messages.create(session.id, role=Role.ASSISTANT)
        await other.messages.delete(reply.id)
        reply.add_tool_call(ToolCall("c1", "grep", "{}"))
        first = asyncio.ensure_future(writer.messages.update(reply))
        await asyncio.sleep(0)  # the first write is in flight
        reply.add_tool_call(ToolCall("c2", "grep", "{}"))
        second = asyncio.ensure_future(writer.messages.update(reply))
        results = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), WAIT
        )
        assert [type(r) for r in results] == [MessageNotFound, MessageNotFound]


async def test_update_with_debounce_zero_of_a_message_deleted_elsewhere_raises(
    db_url: str,
) -> None:
    """Without buffering every update is written before it returns, so it is told too."""
    async with (
        open_store_with(db_url, StoreOptions(debounce=0)) as writer,
        open_store(db_url) as other,
    ):
        session = await writer.sessions.create("write-through")
        reply = await writer.messages.create(session.id, role=Role.ASSISTANT)
        await other.messages.delete(reply.id)
        reply.append_text("more")
        with pytest.raises(MessageNotFound):
            await writer.messages.update(reply)


# -- nothing held for good ------------------------------------------------------------------------


async def test_debounce_zero_holds_nothing_once_writes_and_creates_return(db_url: str) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=0)) as store:
        session = await store.sessions.create("write-through")
        for n in range(300):
            message = await store.messages.create(
                session.id, role=Role.USER, parts=[Text(f"user {n}")]
            )
            assert store.messages.stats().buffered_messages == 0, f"create {n}"
            if n % 2:
                message.parts = [Text(f"user {n}, edited")]
                await store.messages.update(message)
                assert store.messages.stats().buffered_messages == 0, f"update {n}"
        assert store.messages.stats().pending_messages == 0
        listed = await store.messages.list(session.id)
        assert [m.text for m in listed][:3] == ["user 0", "user 1, edited", "user 2"]


async def test_debounce_zero_still_refuses_a_changed_role_after_release(db_url: str) -> None:
    """Releasing at once keeps what the row holds for life: a changed role is refused."""
    async with open_store_with(db_url, StoreOptions(debounce=0)) as store:
        session = await store.sessions.create("lifelong")
        message = await store.messages.create(session.id, role=Role.USER, parts=[Text("hi")])
        message.role = Role.ASSISTANT
        with pytest.raises(InvalidMessage, match="role"):
            await store.messages.update(message)


async def test_created_messages_are_released_when_idle(db_url: str) -> None:
    """A store that only creates (user messages, say) releases them after ``idle_release``,
    with no update to arm a tick."""
    options = StoreOptions(debounce=0.01, idle_release=0.2)
    async with open_store_with(db_url, options) as store:
        session = await store.sessions.create("only creates")
        for n in range(20):
            await store.messages.create(session.id, role=Role.USER, parts=[Text(f"{n}")])
            # Held once created; earlier ones may already be released (a slow machine can
            # take longer than ``idle_release`` for the twenty creates).
            assert store.messages.stats().buffered_messages >= 1
        await until(lambda: store.messages.stats().buffered_messages == 0, "the idle release")
