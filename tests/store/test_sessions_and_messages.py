"""The data layer on SQLite and PostgreSQL: sessions, messages, counts, cascades, errors, close."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import text, update

from messagestore import (
    Binary,
    CorruptRow,
    FinishReason,
    ImageURL,
    InvalidMessage,
    Message,
    MessageNotFound,
    NotFoundError,
    Reasoning,
    Role,
    SessionNotFound,
    Store,
    StoreClosed,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore._database._schema import messages as messages_table
from pubsub import EventType

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def test_session_lifecycle(store: Store) -> None:
    parent = await store.sessions.create("parent")
    child = await store.sessions.create("child 🧵", parent_session_id=parent.id)
    assert child.parent_session_id == parent.id
    assert child.created_at.tzinfo is UTC
    fetched = await store.sessions.get(child.id)
    assert fetched == child
    child.title = "renamed"
    child.prompt_tokens, child.completion_tokens, child.cost = 10, 20, 0.5
    child.message_count = 999  # the store's own counter: not taken from the caller
    saved = await store.sessions.save(child)
    assert (saved.title, saved.prompt_tokens, saved.completion_tokens, saved.cost) == (
        "renamed", 10, 20, 0.5,
    )  # fmt: skip
    assert saved.message_count == 0
    assert saved.updated_at >= saved.created_at
    assert [s.id for s in await store.sessions.list()] == [child.id, parent.id]
    await store.sessions.delete(parent.id)
    with pytest.raises(SessionNotFound):
        await store.sessions.get(parent.id)


async def test_every_part_round_trips(sync_store: Store) -> None:
    store = sync_store
    session = await store.sessions.create("parts")
    parts = [
        Reasoning("thinking\x00 ü", "sig", WHEN, WHEN),
        Text(""),
        ImageURL("https://example.test/a.png", "low"),
        Binary("f.bin", "application/octet-stream", bytes(range(256))),
        ToolCall("call-1", "grep", '{"q": "\\u0000"}', True, True),
        ToolResult("call-1", "grep", "résultat 🧪", "{}", True),
    ]
    created = await store.messages.create(
        session.id, role=Role.ASSISTANT, parts=parts, model="m", provider="p"
    )
    created.add_finish(FinishReason.CONTENT_FILTER, "msg", "details")
    await store.messages.update(created)
    fetched = await store.messages.get(created.id)
    assert fetched.parts == created.parts
    assert (fetched.model, fetched.provider, fetched.role) == ("m", "p", Role.ASSISTANT)
    assert fetched.created_at == created.created_at
    assert fetched.updated_at >= fetched.created_at


async def test_creation_order_within_one_millisecond(store: Store) -> None:
    session = await store.sessions.create("order")
    created = [
        await store.messages.create(session.id, role=Role.USER, parts=[Text(str(i))])
        for i in range(30)
    ]
    listed = await store.messages.list(session.id)
    assert [m.id for m in listed] == [m.id for m in created]


async def test_user_message_listings(store: Store) -> None:
    a = await store.sessions.create("a")
    b = await store.sessions.create("b")
    u1 = await store.messages.create(a.id, role="user", parts=[Text("1")])
    await store.messages.create(a.id, role=Role.ASSISTANT)
    u2 = await store.messages.create(b.id, role=Role.USER, parts=[Text("2")])
    assert [m.id for m in await store.messages.list_user_messages(a.id)] == [u1.id]
    assert [m.id for m in await store.messages.list_all_user_messages()] == [u1.id, u2.id]


async def test_message_count_follows_creates_and_deletes(store: Store) -> None:
    session = await store.sessions.create("count")
    other = await store.sessions.create("other")
    ids = [(await store.messages.create(session.id, role=Role.USER)).id for _ in range(5)]
    await store.messages.create(other.id, role=Role.USER)
    assert (await store.sessions.get(session.id)).message_count == 5
    await store.messages.delete(ids[0])
    assert (await store.sessions.get(session.id)).message_count == 4
    await store.messages.delete_session_messages(session.id)
    assert (await store.sessions.get(session.id)).message_count == 0
    assert await store.messages.list(session.id) == []
    assert (await store.sessions.get(other.id)).message_count == 1


async def test_session_delete_cascades_to_messages(store: Store) -> None:
    session = await store.sessions.create("cascade")
    message = await store.messages.create(session.id, role=Role.USER)
    async with store.messages.subscribe() as sub:
        await store.sessions.delete(session.id)
        event = await asyncio.wait_for(sub.receive(), 5)
    assert (event.type, event.payload.id) == (EventType.DELETED, message.id)
    with pytest.raises(MessageNotFound):
        await store.messages.get(message.id)
    async with store.engine.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM messages"))
        assert count.scalar_one() == 0


async def test_not_found_errors(store: Store) -> None:
    with pytest.raises(SessionNotFound, match="nope"):
        await store.messages.create("nope", role=Role.USER)
    with pytest.raises(MessageNotFound):
        await store.messages.get("missing")
    with pytest.raises(NotFoundError):
        await store.messages.delete("missing")
    with pytest.raises(LookupError):
        await store.sessions.delete("missing")
    with pytest.raises(SessionNotFound):
        await store.sessions.get("'; DROP TABLE sessions; --")
    with pytest.raises(InvalidMessage, match="unknown role"):
        await store.messages.create("x", role="robot")
    session = await store.sessions.create("s")
    with pytest.raises(InvalidMessage):
        await store.messages.create(session.id, role=Role.USER, parts=[Text("a"), Text("b")])
    assert (await store.sessions.get(session.id)).message_count == 0


async def test_events_for_creates_and_deletes(store: Store) -> None:
    async with store.sessions.subscribe() as session_events, store.messages.subscribe() as events:
        session = await store.sessions.create("events")
        message = await store.messages.create(session.id, role=Role.USER)
        await store.messages.delete(message.id)
        got = [await asyncio.wait_for(events.receive(), 5) for _ in range(2)]
        first = await asyncio.wait_for(session_events.receive(), 5)
    assert [(e.type, e.payload.id) for e in got] == [
        (EventType.CREATED, message.id),
        (EventType.DELETED, message.id),
    ]
    assert (first.type, first.payload.id) == (EventType.CREATED, session.id)


async def test_corrupt_row_is_a_clear_error(store: Store) -> None:
    session = await store.sessions.create("corrupt")
    good = await store.messages.create(session.id, role=Role.USER, parts=[Text("ok")])
    bad = await store.messages.create(session.id, role=Role.USER)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(messages_table)
            .where(messages_table.c.id == bad.id)
            .values(parts='[{"type": "hologram", "data": {}}]')
        )
    with pytest.raises(CorruptRow, match=bad.id):
        await store.messages.get(bad.id)
    with pytest.raises(CorruptRow, match="hologram"):
        await store.messages.list(session.id)
    assert (await store.messages.get(good.id)).text == "ok"
    await store.messages.delete(bad.id)  # a corrupt row can still be removed
    assert [m.id for m in await store.messages.list(session.id)] == [good.id]


async def test_close_is_idempotent_and_final(db_url: str) -> None:
    store = await open_store(db_url)
    session = await store.sessions.create("closing")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    message.append_text("buffered")
    await store.messages.update(message)
    sub = store.messages.subscribe()
    await store.close()
    await store.close()
    assert store.closed
    events = [event async for event in sub]  # iteration ends after close
    assert [(e.type, e.payload.id, e.payload.text) for e in events] == [
        (EventType.UPDATED, message.id, "buffered")  # close flushed and announced it
    ]
    with pytest.raises(StoreClosed):
        await store.messages.get(message.id)
    with pytest.raises(StoreClosed):
        await store.sessions.list()
    with pytest.raises(StoreClosed):
        await store.messages.update(message)
    async with open_store(db_url) as reopened:
        assert (await reopened.messages.get(message.id)).text == "buffered"


async def test_reopen_keeps_data_and_schema(db_url: str) -> None:
    async with open_store(db_url) as store:
        session = await store.sessions.create("persisted")
    async with open_store(db_url) as store:
        assert (await store.sessions.get(session.id)).title == "persisted"


async def test_bad_arguments(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        await open_store("mysql://localhost/db")
    with pytest.raises(ValueError, match="not a database URL"):
        await open_store("::::")
    with pytest.raises(ValueError, match="debounce"):
        await open_store("sqlite+aiosqlite://", debounce="fast")  # type: ignore[arg-type]


async def test_in_memory_sqlite_works() -> None:
    async with open_store("sqlite+aiosqlite://") as store:
        session = await store.sessions.create("memory")
        message = await store.messages.create(session.id, role=Role.USER, parts=[Text("hi")])
        assert (await store.messages.get(message.id)).text == "hi"


def test_message_equality_compares_every_field_but_the_revision() -> None:
    a = Message("1", "s", Role.USER, [Text("x")], created_at=WHEN, updated_at=WHEN)
    assert a == a.clone()
    later = WHEN.replace(microsecond=0)
    changes = {
        "id": "2",
        "session_id": "t",
        "role": Role.ASSISTANT,
        "parts": [Text("y")],
        "model": "m",
        "provider": "p",
        "created_at": later,
        "updated_at": later,
        "is_summary_message": True,
    }
    compared = {f.name for f in dataclasses.fields(Message) if f.compare}
    assert compared == set(changes), "a new field: say whether equality compares it"
    for name, value in changes.items():
        assert a != dataclasses.replace(a, **{name: value}), f"equality ignores {name}"
    # The revision only says which change stored the state; equal content is equal.
    assert a == dataclasses.replace(a, revision=7)
