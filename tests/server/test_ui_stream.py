"""The AI SDK UI message stream: the encoder (stored parts to protocol chunks) and the route,
live over a real socket on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from messagestore import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    Message,
    Reasoning,
    Role,
    Store,
    Text,
    ToolCall,
    ToolResult,
)
from messagestore.server import create_app
from messagestore.server._ui_stream import UIStreamEncoder
from tests.support.server_helpers import serving

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def message(*parts: Any, role: Role = Role.ASSISTANT) -> Message:
    return Message("m1", "s1", role, list(parts), model="gpt", created_at=NOW, updated_at=NOW)


def types(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["type"] for c in chunks]


def test_a_whole_message_maps_part_by_part() -> None:
    encoder = UIStreamEncoder("m1")
    chunks = encoder.encode(
        message(
            Reasoning("think", "sig", NOW, NOW),
            Text("hello"),
            ToolCall("c1", "search", '{"q": "x"}', finished=True, provider_executed=True),
            ToolResult("c1", "search", "found", metadata="m"),
            ToolCall("c2", "fail", "not json", finished=True),
            ToolResult("c2", "fail", "boom", is_error=True),
            ImageURL("https://example.com/a.png", "high"),
            Binary("notes.txt", "text/plain", b"hi"),
            Finish(FinishReason.TOOL_USE, NOW),
        )
    )
    assert encoder.done
    assert types(chunks) == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-output-available",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-output-error",
        "file",
        "file",
        "text-end",
        "finish-step",
        "finish",
    ]
    by_type = {c["type"]: c for c in chunks}
    assert by_type["start"] == {
        "type": "start",
        "messageId": "m1",
        "messageMetadata": {
            "sessionId": "s1",
            "role": "assistant",
            "model": "gpt",
            "provider": "",
            "createdAt": NOW.isoformat(),
        },
    }
    assert by_type["reasoning-end"]["providerMetadata"] == {"messagestore": {"signature": "sig"}}
    assert chunks[9]["input"] == {"q": "x"} and chunks[9]["providerExecuted"] is True
    assert chunks[13]["input"] == "not json"  # not JSON: passed as the string
    assert chunks[10]["output"] == "found"
    assert chunks[10]["providerMetadata"] == {"messagestore": {"metadata": "m"}}
    assert chunks[14]["errorText"] == "boom"
    assert chunks[15] == {
        "type": "file",
        "url": "https://example.com/a.png",
        "mediaType": "image/png",
        "providerMetadata": {"messagestore": {"detail": "high"}},
    }
    assert chunks[16]["url"] == "data:text/plain;base64,aGk="
    assert chunks[-1] == {
        "type": "finish",
        "finishReason": "tool-calls",
        "messageMetadata": {
            "finish": {"reason": "tool_use", "time": NOW.isoformat(), "message": "", "details": ""}
        },
    }
    assert encoder.encode(message(Text("more"))) == []  # finished: nothing more


def test_states_become_deltas() -> None:
    encoder = UIStreamEncoder("m1")
    assert types(encoder.encode(message())) == ["start", "start-step"]
    assert encoder.encode(message(Reasoning("a", started_at=NOW))) == [
        {"type": "reasoning-start", "id": "reasoning"},
        {"type": "reasoning-delta", "id": "reasoning", "delta": "a"},
    ]
    assert encoder.encode(message(Reasoning("ab", started_at=NOW))) == [
        {"type": "reasoning-delta", "id": "reasoning", "delta": "b"}
    ]
    assert encoder.encode(message(Reasoning("ab", started_at=NOW))) == []  # same state
    done = Reasoning("ab", started_at=NOW, finished_at=NOW)
    assert types(encoder.encode(message(done, Text("x")))) == [
        "reasoning-end",
        "text-start",
        "text-delta",
    ]
    call = ToolCall("c", "t", '{"a"')
    assert encoder.encode(message(done, Text("xy"), call)) == [
        {"type": "text-delta", "id": "text", "delta": "y"},
        {"type": "tool-input-start", "toolCallId": "c", "toolName": "t"},
        {"type": "tool-input-delta", "toolCallId": "c", "inputTextDelta": '{"a"'},
    ]
    call = ToolCall("c", "t", '{"a": 1}', finished=True)
    assert types(encoder.encode(message(done, Text("xy"), call))) == [
        "tool-input-delta",
        "tool-input-available",
    ]
    finish = Finish(FinishReason.END_TURN, NOW)
    assert types(encoder.encode(message(done, Text("xy!"), call, finish))) == [
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]


@pytest.mark.parametrize(
    ("reason", "extra", "protocol"),
    [
        (FinishReason.END_TURN, [], "stop"),
        (FinishReason.MAX_TOKENS, [], "length"),
        (FinishReason.CONTENT_FILTER, [], "content-filter"),
        (FinishReason.ERROR, ["error"], "error"),
        (FinishReason.CANCELED, ["abort"], "other"),
        (FinishReason.INTERRUPTED, ["abort"], "other"),
        (FinishReason.PERMISSION_DENIED, [], "other"),
        (FinishReason.UNKNOWN, [], "other"),
    ],
)
def test_finish_reasons(reason: FinishReason, extra: list[str], protocol: str) -> None:
    chunks = UIStreamEncoder("m1").encode(message(Finish(reason, NOW, "why", "detail")))
    assert types(chunks) == ["start", "start-step", "finish-step", *extra, "finish"]
    assert chunks[-1]["finishReason"] == protocol
    assert chunks[-1]["messageMetadata"]["finish"]["reason"] == str(reason)


def test_a_tool_message_announces_the_call_of_its_result() -> None:
    chunks = UIStreamEncoder("m1").encode(message(ToolResult("c9", "search", "ok"), role=Role.TOOL))
    assert chunks[2:] == [
        {"type": "tool-input-available", "toolCallId": "c9", "toolName": "search", "input": None},
        {"type": "tool-output-available", "toolCallId": "c9", "output": "ok"},
        {"type": "finish-step"},
        {"type": "finish"},  # only replies stream: a tool message is complete as stored
    ]


def test_rewritten_text_ends_the_stream_with_an_error() -> None:
    encoder = UIStreamEncoder("m1")
    encoder.encode(message(Text("hello")))
    chunks = encoder.encode(message(Text("jello")))
    assert types(chunks) == ["error"] and encoder.broken and encoder.done
    deleted = UIStreamEncoder("m1")
    deleted.encode(message(Text("x")))
    assert types(deleted.deleted()) == ["error"] and deleted.done


# -- the route -------------------------------------------------------------------------------


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, keepalive=0.2)
    async with serving(app) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


async def read_chunks(
    client: httpx.AsyncClient, message_id: str
) -> tuple[httpx.Response, list[Any]]:
    chunks: list[Any] = []
    async with (
        asyncio.timeout(30),
        client.stream("GET", f"/api/messages/{message_id}/ui-stream") as r,
    ):
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                chunks.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return r, chunks


async def test_ui_stream_joins_mid_stream_and_follows_to_the_end(
    store: Store, client: httpx.AsyncClient
) -> None:
    session = await store.sessions.create("ui")
    reply = await store.messages.create(session.id, role=Role.ASSISTANT)
    for i in range(20):  # already streamed before the client comes
        reply.append_text(f"a{i} ")
        await store.messages.update(reply)
    await store.messages.flush(reply.id)
    joined = asyncio.Event()

    async def more() -> None:
        await joined.wait()
        for i in range(50):
            reply.append_text(f"b{i} ")
            await store.messages.update(reply)
            await asyncio.sleep(0.002)
        reply.add_finish(FinishReason.END_TURN)
        await store.messages.update(reply)

    writer = asyncio.create_task(more())
    chunks: list[Any] = []
    async with (
        asyncio.timeout(30),
        client.stream("GET", f"/api/messages/{reply.id}/ui-stream") as r,
    ):
        assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            joined.set()
            if line.startswith("data: "):
                data = line[6:]
                chunks.append("[DONE]" if data == "[DONE]" else json.loads(data))
    await writer
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["type"] == "finish"
    text = "".join(c["delta"] for c in chunks[:-1] if c["type"] == "text-delta")
    assert text == (await store.messages.get(reply.id)).text  # nothing lost, nothing twice


async def test_ui_stream_of_a_finished_and_a_missing_message(
    store: Store, client: httpx.AsyncClient
) -> None:
    session = await store.sessions.create("ui")
    reply = await store.messages.create(session.id, role=Role.ASSISTANT)
    reply.append_text("done")
    reply.add_finish(FinishReason.END_TURN)
    await store.messages.update(reply)
    _, chunks = await read_chunks(client, reply.id)
    assert [c if c == "[DONE]" else c["type"] for c in chunks] == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
        "[DONE]",
    ]
    missing = await client.get("/api/messages/nope/ui-stream")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_ui_stream_of_a_deleted_message_ends_with_an_error(
    store: Store, client: httpx.AsyncClient
) -> None:
    session = await store.sessions.create("ui")
    reply = await store.messages.create(session.id, role=Role.ASSISTANT)
    reply.append_text("soon gone")
    await store.messages.update(reply)
    await store.messages.flush(reply.id)
    started = asyncio.Event()
    chunks: list[Any] = []

    async def read() -> None:
        async with client.stream("GET", f"/api/messages/{reply.id}/ui-stream") as r:
            async for line in r.aiter_lines():
                started.set()
                if line.startswith("data: "):
                    chunks.append(line[6:])

    async with asyncio.timeout(30):
        reading = asyncio.create_task(read())
        await started.wait()
        await store.messages.delete(reply.id)
        await reading
    assert json.loads(chunks[-2])["type"] == "error"
    assert "deleted" in json.loads(chunks[-2])["errorText"]
    assert chunks[-1] == "[DONE]"
