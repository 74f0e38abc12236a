"""Bad and extreme input through a real store, on SQLite and PostgreSQL.

* any parts (NUL, lone surrogates, any Unicode, any bytes, any aware time) round-trip exactly
  through ``create`` and through the debounced ``update`` path (Hypothesis);
* corrupt rows raise ``CorruptRow`` naming the row's id, from ``get`` and from ``list``
  (more shapes of corruption: ``test_codec.py``; recovery skips them: ``test_recovery.py``);
* hostile ids are looked up as plain values: ``NotFoundError``, never an SQL or driver error,
  and the store keeps writing other messages;
* hostile titles are stored verbatim; text a column cannot hold (NUL, lone surrogates in a
  title, model, provider or id) is refused with ``InvalidMessage`` before anything is written;
* a 10 MB message streams in 100 deltas of 100 KB and round-trips.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from messagestore import (
    Binary,
    CorruptRow,
    Finish,
    FinishReason,
    ImageURL,
    InvalidMessage,
    Message,
    MessageNotFound,
    Part,
    Reasoning,
    Role,
    SessionNotFound,
    Store,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore._database._schema import messages as messages_table

# Any code point, lone surrogates included (hypothesis' default text() leaves them out).
anything = st.text(st.characters(exclude_categories=()), max_size=40)
storable = st.text(max_size=20).filter(lambda s: "\x00" not in s)
aware = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]
    ),
)
any_part = st.one_of(
    st.builds(Text, anything),
    st.builds(Reasoning, anything, anything, st.none() | aware, st.none() | aware),
    st.builds(ImageURL, anything, anything),
    st.builds(Binary, anything, anything, st.binary(max_size=64)),
    st.builds(ToolCall, anything, anything, anything, st.booleans(), st.booleans()),
    st.builds(ToolResult, anything, anything, anything, anything, st.booleans()),
    st.builds(Finish, st.sampled_from(FinishReason), aware, anything, anything),
)


def valid_parts(parts: list[Part]) -> list[Part]:
    """Drop what a message may not hold: a second Text/Reasoning/Finish, duplicate tool ids."""
    kinds: set[type] = set()
    call_ids: set[str] = set()
    kept: list[Part] = []
    for part in parts:
        if isinstance(part, Text | Reasoning | Finish):
            if type(part) in kinds:
                continue
            kinds.add(type(part))
        if isinstance(part, ToolCall):
            if not part.id or part.id in call_ids:
                continue
            call_ids.add(part.id)
        kept.append(part)
    return kept


async def round_trip(store: Store, session_id: str, parts: list[Part], meta: list[str]) -> None:
    role, model, provider = Role.ASSISTANT, meta[0], meta[1]
    created = await store.messages.create(
        session_id, role=role, parts=parts, model=model, provider=provider
    )
    stored = await store.messages.get(created.id)
    assert stored.parts == parts
    assert (stored.model, stored.provider) == (model, provider)
    streamed = await store.messages.create(session_id, role=role)
    streamed.parts = list(parts)
    streamed.model = model
    await store.messages.update(streamed)
    await store.messages.flush(streamed.id)
    stored = await store.messages.get(streamed.id)
    assert stored.parts == parts
    assert stored.model == model


async def _open(url: str) -> Store:
    return await open_store(url)


def test_any_parts_round_trip_through_the_store(db_url: str) -> None:
    with asyncio.Runner() as runner:
        store = runner.run(_open(db_url))
        try:
            session = runner.run(store.sessions.create("hypothesis"))

            @settings(max_examples=25, deadline=None)
            @given(
                st.lists(any_part, max_size=8).map(valid_parts),
                st.lists(storable, min_size=2, max_size=2),
            )
            def check(parts: list[Part], meta: list[str]) -> None:
                runner.run(round_trip(store, session.id, parts, meta))

            check()
        finally:
            runner.run(store.close())


async def corrupt(store: Store, message_id: str, **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(messages_table).where(messages_table.c.id == message_id).values(**values)
        )


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"parts": '[{"type":"text","data":{"text":"torn wri'}, "Unterminated string"),
        ({"parts": ""}, "Expecting value"),
        ({"parts": '[{"type":"tool_call","data":{"name":"x"}}]'}, "field 'id' is missing"),
        ({"role": "robot"}, "unknown role 'robot'"),
    ],
)
async def test_corrupt_rows_name_the_id(store: Store, values: dict[str, str], reason: str) -> None:
    session = await store.sessions.create("corrupt")
    good = await store.messages.create(session.id, role=Role.USER, parts=[Text("fine")])
    bad = await store.messages.create(session.id, role=Role.ASSISTANT, parts=[Text("x")])
    await corrupt(store, bad.id, **values)
    for read in (store.messages.get(bad.id), store.messages.list(session.id)):
        with pytest.raises(CorruptRow, match=reason) as caught:
            await read
        assert caught.value.row_id == bad.id
        assert repr(bad.id) in str(caught.value)
    assert (await store.messages.get(good.id)).text == "fine"  # nothing else is affected


HOSTILE_IDS = [
    "'; DROP TABLE messages; --",
    '" OR 1=1 --',
    "%",
    "_",
    "\\",
    " ",
    "x" * 100_000,
    "ü🧪\u202e\u200b",
    "a\x00b",
    "lone \ud800 surrogate",
]


async def test_hostile_ids_are_not_found(store: Store) -> None:
    session = await store.sessions.create("hostile")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    for hostile in HOSTILE_IDS:
        await _look_up(store, session.id, message, hostile)
    assert [s.id for s in await store.sessions.list()] == [session.id]
    assert [m.id for m in await store.messages.list(session.id)] == [message.id]


async def _look_up(store: Store, session_id: str, message: Message, hostile: str) -> None:
    with pytest.raises(MessageNotFound):
        await store.messages.get(hostile)
    with pytest.raises(MessageNotFound):
        await store.messages.delete(hostile)
    with pytest.raises(SessionNotFound):
        await store.sessions.get(hostile)
    with pytest.raises(SessionNotFound):
        await store.sessions.delete(hostile)
    with pytest.raises(SessionNotFound):
        await store.messages.create(hostile, role=Role.USER)
    assert await store.messages.list(hostile) == []
    assert await store.messages.list_user_messages(hostile) == []
    await store.messages.delete_session_messages(hostile)
    await store.messages.flush(hostile)  # nothing buffered for it: nothing to do
    # An update for an id that was never created: refused at once, or reported by the flush
    # that would write it; either way it never blocks the writes of other messages.
    ghost = Message(hostile, session_id, Role.ASSISTANT, [Text("ghost")])
    try:
        await store.messages.update(ghost)
    except InvalidMessage:
        pass
    else:
        with pytest.raises(MessageNotFound):
            await store.messages.flush(hostile)
    message.append_text(f"still writing {len(hostile)};")
    await store.messages.update(message)
    await store.messages.flush_all()
    assert (await store.messages.get(message.id)).parts == message.parts


async def test_hostile_titles_are_stored_verbatim(store: Store) -> None:
    # SQL, quotes, backslashes, LIKE wildcards, control characters, bidi and zero-width
    # characters, astral planes, the empty title, a megabyte.
    titles = [
        "'; DROP TABLE sessions; --",
        'quote " and \\ backslash',
        "ü" * 5000,
        "",
        "100% _done_",
        "tab\there\nnewline\r",
        "\u202eevil\u200b",
        "\U0001d518\U0001d52b\U0001d526 \U0001f9ea",
        "t" * 1_000_000,
    ]
    for title in titles:
        session = await store.sessions.create(title)
        assert (await store.sessions.get(session.id)).title == title
        session.title = title[::-1]
        assert (await store.sessions.save(session)).title == title[::-1]


@pytest.mark.parametrize(
    "bad", ["nul \x00 inside", "lone \udfff surrogate"], ids=["nul", "surrogate"]
)
async def test_text_a_column_cannot_hold_is_refused_up_front(store: Store, bad: str) -> None:
    session = await store.sessions.create("kept")
    with pytest.raises(InvalidMessage, match="title"):
        await store.sessions.create(bad)
    with pytest.raises(InvalidMessage, match="parent_session_id"):
        await store.sessions.create("child", parent_session_id=bad)
    session.title = bad
    with pytest.raises(InvalidMessage, match="title"):
        await store.sessions.save(session)
    assert [(s.id, s.title) for s in await store.sessions.list()] == [(session.id, "kept")]
    with pytest.raises(InvalidMessage, match="model"):
        await store.messages.create(session.id, role=Role.ASSISTANT, model=bad)
    with pytest.raises(InvalidMessage, match="provider"):
        await store.messages.create(session.id, role=Role.ASSISTANT, provider=bad)
    assert (await store.sessions.get(session.id)).message_count == 0
    message = await store.messages.create(session.id, role=Role.ASSISTANT, model="m")
    message.append_text("streaming")
    await store.messages.update(message)
    message.model = bad
    with pytest.raises(InvalidMessage, match="model"):
        await store.messages.update(message)
    message.model = "m"
    message.append_text(" on")
    await store.messages.update(message)
    await store.messages.flush_all()  # the refused state never reached the writer
    stored = await store.messages.get(message.id)
    assert (stored.text, stored.model) == ("streaming on", "m")
    assert store.messages.stats().write_failures == 0


async def test_ten_megabyte_message_streams_and_round_trips(db_url: str) -> None:
    # 100 deltas of 102,400 characters (one non-ASCII each): 10,240,000 characters. Each
    # append_text copies the whole text (str is immutable), so the caller's side costs O(n)
    # per delta: 1,000 deltas of 10 KB spend ~5 s in those copies alone on a small machine.
    delta = ("0123456789abcdef" * 6400)[:-2] + "é\n"
    async with open_store(db_url) as store:
        session = await store.sessions.create("big")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        for i in range(100):
            message.append_text(delta)
            await store.messages.update(message)
            if i % 5 == 0:
                await asyncio.sleep(0.005)  # let timer-fired writes of the growing text run
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        stats = store.messages.stats()
        assert stats.write_failures == 0
        assert stats.bytes_written > 10_240_000
    async with open_store(db_url) as store:
        stored = await store.messages.get(message.id)
        assert len(stored.text) == 10_240_000
        assert stored.text == delta * 100
        assert stored.finish is not None
        assert stored.finish.reason is FinishReason.END_TURN
        assert [m.id for m in await store.messages.list(session.id)] == [message.id]


async def test_size_limits_are_enforced_before_anything_is_written(db_url: str) -> None:
    from messagestore._model import MAX_FIELD_CHARS, MAX_MESSAGE_CHARS

    async with open_store(db_url, debounce=60) as store:
        session = await store.sessions.create("limits")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("kept")
        await store.messages.update(message)
        too_long = message.clone()
        too_long.append_text("x" * MAX_FIELD_CHARS)
        with pytest.raises(InvalidMessage, match="limit is"):
            await store.messages.update(too_long)
        too_big = message.clone()
        too_big.add_binary(
            "big.bin", "application/octet-stream", b"\0" * (MAX_MESSAGE_CHARS // 4 * 3)
        )
        with pytest.raises(InvalidMessage, match="store large content elsewhere"):
            await store.messages.update(too_big)
        await store.messages.flush_all()
        assert (await store.messages.get(message.id)).text == "kept"
