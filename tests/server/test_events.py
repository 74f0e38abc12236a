"""The event stream ``GET /api/events`` over a real socket (uvicorn in the test's loop), on
SQLite and PostgreSQL: resume points, Last-Event-ID, keep-alives, slow readers, compaction,
draining."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from messagestore import FinishReason, Message, Role, Store, open_store
from messagestore.server import create_app
from messagestore.server._json import message_json
from messagestore.testing import prune_tombstones
from tests.support.server_helpers import SSEEvent, SSEReader, serving, sse_events
from tests.support.wire import WireView, fields

TIMEOUT = 30


@pytest.fixture
async def live(store: Store) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(store, keepalive=0.2)
    async with (
        serving(app) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        yield app, client


async def stream_reply(store: Store, session_id: str, words: int, *, pause: float = 0.0) -> Message:
    reply = await store.messages.create(session_id, role=Role.ASSISTANT)
    for i in range(words):
        reply.append_text(f"w{i} ")
        await store.messages.update(reply)
        await asyncio.sleep(pause)
    reply.add_finish(FinishReason.END_TURN)
    await store.messages.update(reply)
    return reply


async def collect_until(
    client: httpx.AsyncClient,
    url: str,
    done: Callable[[list[SSEEvent], WireView], bool],
    headers: dict[str, str] | None = None,
    limit: int | None = None,
    view: WireView | None = None,
) -> tuple[list[SSEEvent], SSEReader, WireView]:
    """Read events until ``done(events, view)`` (or ``limit`` events), within the timeout;
    ``view`` (a new one by default) takes every frame by the wire rules."""
    events: list[SSEEvent] = []
    reader = SSEReader()
    view = WireView() if view is None else view
    async with asyncio.timeout(TIMEOUT):
        async for current, event in sse_events(client, url, headers):
            reader = current
            if event.comment is not None:
                continue
            events.append(event)
            if event.event != "reset":
                view.take(event)
            if done(events, view) or (limit is not None and len(events) >= limit):
                break
    assert view.failures == []
    return events, reader, view


def finished(message_id: str) -> Callable[[list[SSEEvent], WireView], bool]:
    def done(events: list[SSEEvent], view: WireView) -> bool:
        del events
        message = view.messages.get(message_id)
        return message is not None and message.is_finished

    return done


async def test_events_from_a_snapshot_revision(
    store: Store, live: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = live
    session = await store.sessions.create("watched")
    other = await store.sessions.create("other")
    before = await stream_reply(store, session.id, 3)  # in the snapshot, not in the stream
    snapshot = (await client.get(f"/api/sessions/{session.id}/messages")).json()
    assert [m["id"] for m in snapshot["messages"]] == [before.id]

    async def write() -> Message:
        await stream_reply(store, other.id, 5, pause=0.005)
        return await stream_reply(store, session.id, 40, pause=0.005)

    writer = asyncio.create_task(write())
    url = f"/api/events?session_id={session.id}&since={snapshot['revision']}"
    reply_id: list[str] = []

    def done(events: list[SSEEvent], view: WireView) -> bool:
        return bool(reply_id) and finished(reply_id[0])(events, view)

    async def learn_id() -> None:
        reply_id.append((await writer).id)

    learner = asyncio.create_task(learn_id())
    events, _, view = await collect_until(
        client, url, lambda evs, view: learner.done() and done(evs, view)
    )
    await learner
    reply = await store.messages.get(reply_id[0])
    ids = [int(e.id) for e in events if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # strictly increasing resume points
    payloads = [json.loads(e.data) for e in events]
    assert {m.session_id for m in view.messages.values()} == {session.id}
    assert before.id not in {p["id"] for p in payloads}
    assert events[0].event == "created"
    assert {e.event for e in events} == {"created", "delta"}  # whole once, then deltas
    for event, payload in zip(events, payloads, strict=True):
        assert payload["revision"] <= int(event.id or 0)
    assert fields(view.messages[reply.id]) == fields(reply)  # the newest state, as stored
    assert message_json(view.messages[reply.id]) == message_json(reply)  # as GET gives it


async def test_last_event_id_resumes_without_gaps_or_repeats(
    store: Store, live: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = live
    session = await store.sessions.create("resume")
    snapshot = (await client.get(f"/api/sessions/{session.id}/messages")).json()
    url = f"/api/events?session_id={session.id}&since={snapshot['revision']}"
    first_reply = await stream_reply(store, session.id, 10)
    first, reader, view = await collect_until(client, url, finished(first_reply.id))
    resume = reader.last_event_id
    assert resume is not None
    # Disconnected: more happens.
    second_reply = await stream_reply(store, session.id, 10)
    deleted = await stream_reply(store, session.id, 2)
    await store.messages.delete(deleted.id)
    second, _, view = await collect_until(
        client,
        url,
        lambda evs, view: any(e.event == "deleted" for e in evs),
        headers={"last-event-id": resume},
        view=view,
    )
    revisions_first = {json.loads(e.data)["revision"] for e in first}
    revisions_second = [json.loads(e.data)["revision"] for e in second]
    assert not revisions_first & set(revisions_second)  # nothing twice
    assert min(revisions_second) > int(resume)
    stored = await store.messages.list(session.id)
    assert view.disagreements(stored) == []  # nothing lost
    assert {m.id for m in stored} == {first_reply.id, second_reply.id}
    # Last-Event-ID wins over since=.
    again, _, _ = await collect_until(
        client,
        url,
        lambda evs, view: True,
        headers={"last-event-id": str(second[0].id)},
        limit=1,
    )
    assert json.loads(again[0].data)["revision"] > int(second[0].id or 0)


async def test_idle_stream_keeps_alive_and_moves_its_resume_point(
    store: Store, live: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = live
    watched = await store.sessions.create("quiet")
    busy = await store.sessions.create("busy")
    comments = 0
    ids: list[int] = []
    async with asyncio.timeout(TIMEOUT):
        async for reader, event in sse_events(client, f"/api/events?session_id={watched.id}"):
            if event.comment == "keep-alive":
                comments += 1
                if comments == 1:
                    await stream_reply(store, busy.id, 2)  # out of scope: no event
            if reader.last_event_id is not None:
                ids.append(int(reader.last_event_id))
            assert event.comment is not None, "no event expected for another session"
            if (
                comments >= 1
                and ids
                and ids[-1] >= (await store.messages.list(busy.id))[0].revision
            ):
                break
    assert comments >= 1
    assert ids == sorted(ids)


async def test_bad_resume_points_and_unknown_sessions(
    store: Store, live: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = live
    for url, headers in [
        ("/api/events?since=-1", {}),
        ("/api/events?since=abc", {}),
        ("/api/events?since=1e3", {}),
        ("/api/events", {"last-event-id": "x"}),
        ("/api/events", {"last-event-id": "99999999999999999999999"}),
    ]:
        response = await client.get(url, headers=headers)
        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"]["code"] == "invalid"
    missing = await client.get("/api/events?session_id=nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_slow_reader_is_late_never_stale(
    store: Store, live: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = live
    session = await store.sessions.create("slow")
    snapshot = (await client.get(f"/api/sessions/{session.id}/messages")).json()
    reply = await store.messages.create(session.id, role=Role.ASSISTANT)
    updates = 400
    reader = SSEReader()
    view = WireView()
    received: list[SSEEvent] = []

    def take(chunk: bytes) -> None:
        for event in reader.feed(chunk.decode()):
            if event.comment is None:
                received.append(event)
                view.take(event)

    url = f"/api/events?session_id={session.id}&since={snapshot['revision']}"
    async with asyncio.timeout(TIMEOUT), client.stream("GET", url) as response:
        chunks = response.aiter_bytes()
        take(await anext(chunks))
        # Stop reading while 400 states of a growing 4 KB-per-update message are written.
        for i in range(updates):
            reply.append_text(f"{i:04d}" + "x" * 4000)
            await store.messages.update(reply)
            if i % 20 == 0:
                await store.messages.flush(reply.id)
        reply.add_finish(FinishReason.END_TURN)
        await store.messages.update(reply)
        async for chunk in chunks:
            take(chunk)
            if reply.id in view.messages and view.messages[reply.id].is_finished:
                break
    assert view.failures == []
    assert fields(view.messages[reply.id]) == fields(await store.messages.get(reply.id))
    assert len(received) < updates  # intermediate states were merged, the newest was not


async def test_compacted_resume_point_gets_a_reset_event(
    store: Store, db_url: str, live: tuple[Any, httpx.AsyncClient]
) -> None:
    _, client = live
    session = await store.sessions.create("old")
    gone = await stream_reply(store, session.id, 1)
    await store.messages.delete(gone.id)
    async with open_store(db_url, feed_retention=timedelta(microseconds=1)) as pruning:
        await prune_tombstones(pruning)
    events, _, _ = await collect_until(
        client, f"/api/events?session_id={session.id}&since=0", lambda evs, view: True
    )
    assert events[0].event == "reset"
    assert json.loads(events[0].data)["code"] == "revision_compacted"


async def test_drain_ends_streams_and_refuses_new_ones(
    store: Store, live: tuple[Any, httpx.AsyncClient]
) -> None:
    app, client = live
    opened = asyncio.Event()

    async def read() -> int:
        count = 0
        async for _, _event in sse_events(client, "/api/events"):
            count += 1
            opened.set()
        return count

    reading = asyncio.create_task(read())
    async with asyncio.timeout(TIMEOUT):
        await opened.wait()
        assert app.open_streams == 1
        app.drain()
        await reading  # the response ended by itself
    assert app.open_streams == 0
    refused = await client.get("/api/events")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
