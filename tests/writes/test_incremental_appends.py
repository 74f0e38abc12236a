"""Streamed text stored incrementally: appends between whole writes, read back exactly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from messagestore import (
    FinishReason,
    Message,
    Reasoning,
    Role,
    Store,
    Text,
    ToolCall,
    open_store,
)
from messagestore._database import _appends as appends
from messagestore._database._group_commit import WriteItem, write_messages
from messagestore._database._schema import message_appends, message_streams, messages
from messagestore._database._tx import Tx
from messagestore._store import StoreOptions, open_store_with
from pubsub import EventType

WAIT = 10


async def _count(store: Store, table: Any) -> int:
    def job(tx: Tx) -> int:
        return int(tx.conn.execute(select(func.count()).select_from(table)).scalar_one())

    return await store.transaction(job, write=False)


async def _stored_parts(store: Store, message_id: str) -> str:
    def job(tx: Tx) -> str:
        query = select(messages.c.parts).where(messages.c.id == message_id)
        return str(tx.conn.execute(query).scalar_one())

    return await store.transaction(job, write=False)


async def _stream(store: Store, message: Message, deltas: int, tag: str = "") -> None:
    for i in range(deltas):
        message.append_text(f"<{tag}{i}>")
        await store.messages.update(message)
        await store.messages.flush(message.id)  # one write per delta: every write an append


async def test_streamed_text_is_appended_and_read_back_whole(db_url: str) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("appends")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        await _stream(store, message, 30)
        stored = await store.messages.get(message.id)
        assert stored.parts == message.parts
        # The row still holds an early base; the rest lives in append rows.
        assert "<29>" not in await _stored_parts(store, message.id)
        assert await _count(store, message_appends) > 0
        assert await _count(store, message_streams) == 1
        assert stored.revision == (await store.messages.snapshot(session.id)).messages[0].revision
        assert [m.text for m in await store.messages.list(session.id)] == [message.text]


async def test_a_terminal_change_writes_the_row_whole_and_forgets_the_appends(
    db_url: str,
) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("fold")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        await _stream(store, message, 10)
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        assert "<9>" in await _stored_parts(store, message.id)
        assert await _count(store, message_streams) == 0
        assert await _count(store, message_appends) == 0  # nobody needs them any more
        assert (await store.messages.get(message.id)).parts == message.parts


async def test_reasoning_and_tool_input_stream_as_appends_too(db_url: str) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("fields")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_reasoning("think")
        message.add_tool_call(ToolCall("c1", "run", '{"a'))
        await store.messages.update(message)  # a tool call added: written whole
        for i in range(5):
            message.append_reasoning(f" more{i}")
            message.add_tool_call(ToolCall("c1", "run", message.tool_calls[0].input + f"{i}"))
            await store.messages.update(message)
            await store.messages.flush(message.id)
        assert await _count(store, message_streams) == 1
        assert (await store.messages.get(message.id)).parts == message.parts


async def test_appends_fold_into_a_whole_write_once_they_outgrow_the_base(db_url: str) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("geometric")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        chunk = "x" * 1000
        whole_writes = 0
        for _ in range(40):  # 40,000 characters in 1,000-character appends
            message.append_text(chunk)
            await store.messages.update(message)
            await store.messages.flush(message.id)
            if await _count(store, message_streams) == 0:
                whole_writes += 1
        assert (await store.messages.get(message.id)).parts == message.parts
        # Folding when the appends outgrow the base (at least 4,096 characters) gives a
        # geometric series of whole writes, not one per append and not none.
        assert 2 <= whole_writes <= 8


async def test_a_deleted_streaming_message_leaves_nothing_behind(db_url: str) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("delete")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        async with store.messages.subscribe() as sub:
            await _stream(store, message, 5)
            await store.messages.delete(message.id)
            events = []
            async with asyncio.timeout(WAIT):
                while not events or events[-1].type is not EventType.DELETED:
                    events.append(await sub.receive())
        assert events[-1].payload.text == message.text  # the state as it was, streamed text too
        assert await _count(store, message_streams) == 0


async def test_the_feed_replays_streaming_messages_at_their_newest_state(db_url: str) -> None:
    async with open_store_with(db_url, StoreOptions(debounce=60)) as store:
        session = await store.sessions.create("replay")
        first = await store.messages.create(session.id, role=Role.ASSISTANT)
        second = await store.messages.create(session.id, role=Role.ASSISTANT)
        start = (await store.messages.snapshot()).revision
        await _stream(store, first, 3, "a")
        await _stream(store, second, 3, "b")
        await _stream(store, first, 2, "c")
        async with store.messages.subscribe(since=start) as sub:
            got: dict[str, Message] = {}
            async with asyncio.timeout(WAIT):
                while len(got) < 2:
                    event = await sub.receive()
                    got[event.payload.id] = event.payload
            assert got[first.id].parts == first.parts and got[second.id].parts == second.parts
            assert got[first.id] == await store.messages.get(first.id)  # updated_at too
            assert got[first.id].revision > got[second.id].revision
            assert sub.revision == got[first.id].revision


def _item(state: Message, written: Message | None, seq: int | None, streaming: bool) -> WriteItem:
    return WriteItem(state, written, seq, streaming, appended=0, ticks=0, base=10_000)


async def test_a_whole_write_closes_a_stream_the_writer_did_not_know_of(sqlite_url: str) -> None:
    # A tick's append write may still be in flight when a terminal write of the same message
    # is taken: that one is written whole without knowing the stream the first opens. It must
    # close it anyway, or the appends would be applied again on top of the new base.
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("stale")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("base")
        await store.messages.update(message)
        await store.messages.flush(message.id)
        base = message.clone()
        message.append_text(" more")
        appended = message.clone()
        message.add_finish(FinishReason.END_TURN)
        final = message.clone()

        def seq_of(tx: Tx) -> int:
            query = select(messages.c.seq).where(messages.c.id == message.id)
            return int(tx.conn.execute(query).scalar_one())

        seq = await store.transaction(seq_of, write=False)
        await store.transaction(
            lambda tx: write_messages(tx, [_item(appended, base, seq, streaming=False)])
        )
        assert await _count(store, message_streams) == 1
        await store.transaction(
            lambda tx: write_messages(tx, [_item(final, None, seq, streaming=False)])
        )
        assert await _count(store, message_streams) == 0
        assert (await store.messages.get(message.id)).text == "base more"


_PIECE = st.text(max_size=5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["text", "think", "input", "other"]), _PIECE), max_size=20)
)
def test_apply_of_diff_rebuilds_the_state(steps: list[tuple[str, str]]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    written = Message(
        "m", "s", Role.ASSISTANT, [Text(""), Reasoning("", started_at=now), ToolCall("c", "f")]
    )
    for field, piece in steps:
        state = written.clone()
        if field == "text":
            state.append_text(piece)
        elif field == "think":
            state.append_reasoning(piece)
        elif field == "input":
            call = state.tool_calls[0]
            state.add_tool_call(ToolCall(call.id, call.name, call.input + piece))
        else:
            state.model = state.model + piece
        grown = appends.diff(written, state)
        if field == "other" and piece:
            assert grown is None
            written = state
            continue
        assert grown is not None
        rebuilt = written.clone()
        appends.apply(rebuilt, grown)
        assert rebuilt == state
        payload = appends.encode([(7, 3, grown)])
        ((seq, revision, decoded),) = appends.decode(payload, 100)
        assert (seq, revision) == (7, 103) and decoded == grown
        written = state


@pytest.mark.parametrize("edit", ["shrink", "replace", "reorder"])
def test_anything_but_an_append_is_not_one(edit: str) -> None:
    written = Message("m", "s", Role.ASSISTANT, [Text("hello"), ToolCall("c", "f", "{")])
    state = written.clone()
    if edit == "shrink":
        state.parts[0] = Text("hell")
    elif edit == "replace":
        state.parts[0] = Text("jello world")
    else:
        state.parts.reverse()
    assert appends.diff(written, state) is None
