"""The frames of ``GET /api/events`` with deltas: what goes whole and what as ``event: delta``,
``?deltas=``, the bytes a caught-up client gets for a streamed reply, a resumed connection,
and what one connection remembers. Over a real socket (uvicorn in the test's loop), on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from messagestore import (
    Finish,
    FinishReason,
    Message,
    MessageDelta,
    Part,
    Role,
    Store,
    Text,
    ToolCall,
)
from messagestore.server import create_app
from messagestore.server._context import Context
from messagestore.server._live import _Connection, _event_frames, _FrameCache
from messagestore.testing import feed_counter
from pubsub import Event, EventType
from tests.support.server_helpers import SSEEvent, SSEReader, serving
from tests.support.wire import WireView, fields

TIMEOUT = 30


@pytest.fixture
async def live(sync_store: Store) -> AsyncIterator[tuple[Store, httpx.AsyncClient]]:
    """The app on a store that writes (and announces) every update at once."""
    app = create_app(sync_store, keepalive=0.2)
    async with (
        serving(app) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        yield sync_store, client


@dataclass
class Reading:
    """What one client read: its frames, the body's bytes, and its view."""

    events: list[SSEEvent] = field(default_factory=list)
    body: int = 0
    view: WireView = field(default_factory=WireView)
    reader: SSEReader = field(default_factory=SSEReader)


async def read(
    client: httpx.AsyncClient,
    url: str,
    until: Callable[[Reading], bool],
    *,
    opened: asyncio.Event | None = None,
    headers: dict[str, str] | None = None,
) -> Reading:
    """Read ``url`` until ``until(reading)``; ``opened`` is set once the stream's first bytes
    (its resume point) arrived."""
    reading = Reading()
    async with asyncio.timeout(TIMEOUT), client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for raw in response.aiter_raw():
            reading.body += len(raw)
            if opened is not None:
                opened.set()
            for event in reading.reader.feed(raw.decode()):
                if event.comment is None:
                    reading.events.append(event)
                    reading.view.take(event)
            if until(reading):
                break
    assert reading.view.failures == []
    return reading


def finished(message_id: list[str]) -> Callable[[Reading], bool]:
    def done(reading: Reading) -> bool:
        message = reading.view.messages.get(message_id[0]) if message_id else None
        return message is not None and message.is_finished

    return done


async def stream_reply(store: Store, session_id: str, tokens: int, ids: list[str]) -> Message:
    """A reply of ``tokens`` appended pieces, then a tool call whose input grows, then its
    finish; each ``update()`` is its own write and event (debounce 0)."""
    reply = await store.messages.create(session_id, role=Role.ASSISTANT)
    ids.append(reply.id)
    for i in range(tokens):
        reply.append_text(f"tok{i % 10} ")
        await store.messages.update(reply)
    for piece in ('{"q": ', '"what', ' else"', "}"):
        call = reply.tool_calls[0] if reply.tool_calls else ToolCall("c1", "search")
        reply.add_tool_call(ToolCall("c1", "search", call.input + piece))
        await store.messages.update(reply)
    reply.add_finish(FinishReason.TOOL_USE)
    await store.messages.update(reply)
    return reply


async def test_a_caught_up_client_gets_the_text_and_little_more(
    live: tuple[Store, httpx.AsyncClient],
) -> None:
    """Side by side on one reply: with deltas a client's bytes grow with the text (at most
    200 bytes per frame besides it); with ``?deltas=0`` with the square of its length."""
    store, client = live
    session = await store.sessions.create("bytes")
    url = f"/api/events?session_id={session.id}"
    ids: list[str] = []
    opened = [asyncio.Event(), asyncio.Event()]
    readers = [
        asyncio.create_task(read(client, url, finished(ids), opened=opened[0])),
        asyncio.create_task(read(client, url + "&deltas=0", finished(ids), opened=opened[1])),
    ]
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(event.wait() for event in opened))
    reply = await stream_reply(store, session.id, 600, ids)
    deltas, whole = await asyncio.gather(*readers)
    text = len(reply.text.encode()) + len(reply.tool_calls[0].input.encode())
    kinds = [e.event for e in deltas.events]
    assert kinds[0] == "created" and set(kinds[1:]) == {"delta"}, kinds[:5]
    assert {e.event for e in whole.events} == {"created", "updated"}
    stored = await store.messages.get(reply.id)
    for reading in (deltas, whole):
        assert fields(reading.view.messages[reply.id]) == fields(stored)
    frames = len(deltas.events)
    assert frames > 200  # mostly one frame per write: the client kept up
    print(f"deltas: {deltas.body:,} bytes in {frames} frames for {text:,} bytes of text; ")
    print(f"whole states: {whole.body:,} bytes in {len(whole.events)} frames")
    assert deltas.body <= text + 200 * frames
    assert whole.body > 10 * deltas.body


@pytest.mark.parametrize("value", ["0", "false"])
async def test_deltas_off_sends_whole_states_only(
    live: tuple[Store, httpx.AsyncClient], value: str
) -> None:
    store, client = live
    session = await store.sessions.create("whole")
    ids: list[str] = []
    opened = asyncio.Event()
    url = f"/api/events?session_id={session.id}&deltas={value}"
    reading = asyncio.create_task(read(client, url, finished(ids), opened=opened))
    async with asyncio.timeout(TIMEOUT):
        await opened.wait()
    reply = await stream_reply(store, session.id, 20, ids)
    events = (await reading).events
    assert [e.event for e in events] == ["created"] + ["updated"] * (len(events) - 1)
    assert json.loads(events[-1].data)["finished"] is True
    stored = await store.messages.get(reply.id)
    assert fields((await reading).view.messages[reply.id]) == fields(stored)


@pytest.mark.parametrize("value", ["1", "true"])
async def test_deltas_on_is_the_default_and_can_be_named(
    live: tuple[Store, httpx.AsyncClient], value: str
) -> None:
    store, client = live
    session = await store.sessions.create("named")
    ids: list[str] = []
    opened = asyncio.Event()
    url = f"/api/events?session_id={session.id}&deltas={value}"
    reading = asyncio.create_task(read(client, url, finished(ids), opened=opened))
    async with asyncio.timeout(TIMEOUT):
        await opened.wait()
    await stream_reply(store, session.id, 5, ids)
    assert {e.event for e in (await reading).events} == {"created", "delta"}


@pytest.mark.parametrize("value", ["", "2", "yes", "TRUE", "off", "0 "])
async def test_other_deltas_values_are_refused(
    live: tuple[Store, httpx.AsyncClient], value: str
) -> None:
    _, client = live
    response = await client.get("/api/events", params={"deltas": value})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "'deltas'" in error["message"] and repr(value) in error["message"]


async def test_a_resumed_connection_starts_whole_then_sends_deltas(
    live: tuple[Store, httpx.AsyncClient],
) -> None:
    store, client = live
    session = await store.sessions.create("resumed")
    reply = await store.messages.create(session.id, role=Role.ASSISTANT, parts=[Text("One")])
    url = f"/api/events?session_id={session.id}&since=0"
    first = await read(client, url, lambda r: len(r.events) >= 1)
    resume = first.reader.last_event_id
    assert resume is not None
    reply.append_text(" two")  # while disconnected
    await store.messages.update(reply)
    reading = Reading()
    headers = {"last-event-id": resume}
    async with asyncio.timeout(TIMEOUT), client.stream("GET", url, headers=headers) as response:
        chunks = response.aiter_raw()

        async def until(done: Callable[[Message], bool]) -> None:
            while (copy := reading.view.messages.get(reply.id)) is None or not done(copy):
                for event in reading.reader.feed((await anext(chunks)).decode()):
                    if event.comment is None:
                        reading.events.append(event)
                        reading.view.take(event)

        await until(lambda copy: copy.text.startswith("One two"))
        for word in (" three", " four", " five"):  # one change at a time: each its own frame
            reply.append_text(word)
            await store.messages.update(reply)
            await until(lambda copy, word=word: copy.text.endswith(word))
        reply.add_finish(FinishReason.END_TURN)
        await store.messages.update(reply)
        await until(lambda copy: copy.is_finished)
    kinds = [e.event for e in reading.events]
    # Whole first: the replay ("One two"), and the first live change if the feed did not know
    # the state before it (nobody listened when " two" was written). Then deltas.
    assert kinds[0] == "updated" and kinds[-3:] == ["delta"] * 3, kinds
    assert json.loads(reading.events[0].data)["parts"][0]["data"]["text"].startswith("One two")
    assert reading.view.failures == []
    assert fields(reading.view.messages[reply.id]) == fields(await store.messages.get(reply.id))


# -- one connection's memory, and the shared encoding ------------------------------------------


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def state(message_id: str, revision: int, text: str, *, finished: bool = False) -> Message:
    parts: list[Part] = [Text(text)]
    if finished:
        parts.append(Finish(FinishReason.END_TURN, NOW))
    return Message(
        message_id, "s", Role.ASSISTANT, parts, created_at=NOW, updated_at=NOW, revision=revision
    )


def event(kind: EventType, new: Message, old: Message | None = None) -> Event[Message]:
    return Event(kind, new, None if old is None else MessageDelta.between(old, new))


def kind_of(frame: bytes) -> str:
    return frame.split(b"\n")[1].removeprefix(b"event: ").decode()


def test_a_connection_sends_a_delta_only_from_what_it_sent() -> None:
    connection = _Connection(deltas=True)
    a1, a2, a3 = state("a", 1, "x"), state("a", 2, "xy"), state("a", 4, "xyz")
    # The first frame of a message is whole, even if its event carries a delta.
    assert kind_of(connection.frame(event(EventType.UPDATED, a2, a1), 2)) == "updated"
    frame = connection.frame(event(EventType.UPDATED, a3, a2), 5)
    assert frame.startswith(b"id: 5\nevent: delta\ndata: ")
    assert json.loads(frame.split(b"data: ")[1]) == {
        "id": "a",
        "base": 2,
        "revision": 4,
        "append": {"0": "z"},
    }
    # A delta from a state this connection did not send goes whole.
    a5 = state("a", 5, "xyz!")
    assert kind_of(connection.frame(event(EventType.UPDATED, a5, a2), 6)) == "updated"
    # Without a delta, whole; a finished message is forgotten: its next change goes whole.
    a6 = state("a", 6, "xyz!?")
    assert kind_of(connection.frame(event(EventType.UPDATED, a6), 6)) == "updated"
    done = state("a", 7, "xyz!?", finished=True)
    assert kind_of(connection.frame(event(EventType.UPDATED, done, a6), 7)) == "delta"
    assert len(connection) == 0
    again = state("a", 8, "xyz!?.", finished=True)
    assert kind_of(connection.frame(event(EventType.UPDATED, again, done), 8)) == "updated"
    # Deleted: forgotten too.
    b1, b2 = state("b", 9, "b"), state("b", 10, "bb")
    connection.frame(event(EventType.CREATED, b1), 9)
    assert len(connection) == 1
    assert kind_of(connection.frame(event(EventType.DELETED, b1), 11)) == "deleted"
    assert len(connection) == 0
    assert kind_of(connection.frame(event(EventType.UPDATED, b2, b1), 12)) == "updated"


def test_a_connection_remembers_a_bounded_number_of_messages() -> None:
    connection = _Connection(deltas=True, remembered=3)
    for name in "abcd":  # "a" is the least recently sent when "d" arrives: forgotten
        connection.frame(event(EventType.CREATED, state(name, 1, name)), 1)
    assert len(connection) == 3
    for name, expected in (("b", "delta"), ("a", "updated"), ("c", "updated")):
        # "b" was remembered; "a" was forgotten; taking "a" back pushed out "c".
        old, new = state(name, 1, name), state(name, 2, name + "!")
        assert kind_of(connection.frame(event(EventType.UPDATED, new, old), 2)) == expected
    assert len(connection) == 3


def test_without_deltas_a_connection_remembers_nothing() -> None:
    connection = _Connection(deltas=False)
    a1, a2 = state("a", 1, "x"), state("a", 2, "xy")
    connection.frame(event(EventType.CREATED, a1), 1)
    assert kind_of(connection.frame(event(EventType.UPDATED, a2, a1), 2)) == "updated"
    assert len(connection) == 0


def test_frames_are_encoded_once_for_every_connection() -> None:
    cache = _FrameCache(size=2)
    a1, a2 = state("a", 1, "x"), state("a", 2, "xy")
    delta = MessageDelta.between(a1, a2)
    assert delta is not None
    assert cache.delta(delta) is cache.delta(MessageDelta.between(a1, a2))  # type: ignore[arg-type]
    assert cache.whole(EventType.UPDATED, a2) is cache.whole(EventType.UPDATED, a2)
    frames: list[Any] = [cache.delta(delta)]
    for n in range(3, 6):  # bounded: the oldest are forgotten
        cache.delta(MessageDelta.between(a2, state("a", n, "xy" + "!" * n)))  # type: ignore[arg-type]
    assert cache.delta(delta) is not frames[0]
    assert cache.delta(delta) == frames[0]


async def test_the_resume_point_a_batch_reached_is_sent_even_if_its_last_events_were_skipped(
    sync_store: Store,
) -> None:
    """A batch whose last events the subscription skips (here: a live event the replay
    already delivered) still moves the resume point (here: past changes in another session);
    the stream sends that point, it does not keep it for itself. A client waiting to resume at
    the database's revision would otherwise wait for good."""
    store = sync_store
    here = await store.sessions.create("here")
    elsewhere = await store.sessions.create("elsewhere")
    message = await store.messages.create(here.id, role=Role.ASSISTANT)
    subscription = store.messages.subscribe(session_id=here.id, since=0, buffer_size=4)
    probe = store.messages.subscribe(session_id=elsewhere.id)
    message.append_text("a")
    await store.messages.update(message)  # live, and in the replay too
    other = await store.messages.create(elsewhere.id, role=Role.USER, parts=[Text("b")])
    async with asyncio.timeout(TIMEOUT):
        assert (await probe.receive()).payload.id == other.id  # the feed published it
    probe.close()
    newest, _ = await feed_counter(store)
    assert subscription.pending == 1  # the live duplicate
    ctx = Context(store=store, inbound=None, keepalive=0.05)
    ctx.hub.add(subscription)
    frames = _event_frames(ctx, subscription, _Connection(deltas=True))
    ids: list[int] = []
    data = 0
    async with asyncio.timeout(TIMEOUT):
        async for chunk in frames:
            lines = chunk.decode().splitlines()
            ids += [int(line[4:]) for line in lines if line.startswith("id: ")]
            data += sum(line.startswith("data: ") for line in lines)
            if data and ids[-1] >= newest:
                break
    await frames.aclose()
    assert data == 1 and ids[-1] == newest
