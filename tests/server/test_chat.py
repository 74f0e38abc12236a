"""``POST /api/chat`` and ``GET /api/chat/{id}/stream``, the routes the AI SDK's ``useChat``
talks to, on a real socket (uvicorn in the test's loop) with a dispatcher running an agent
that writes an assistant message with a tool call, a tool message and a final answer. On
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from messagestore import FinishReason, Role, Store, Text, ToolCall, ToolResult
from messagestore.dispatch import Dispatcher, QueueConfig, Turn
from messagestore.server import create_app
from tests.support.server_helpers import serving

WAIT = 30
FAST = QueueConfig(debounce=0.01, max_wait=0.2)


class Agent:
    """A ``run_turn`` that answers in three steps; ``hold`` keeps the final answer open until
    ``release()``; ``turns`` counts the turns it ran."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.turns = 0
        self.streaming = asyncio.Event()
        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()

    async def __call__(self, turn: Turn) -> None:
        self.turns += 1
        messages = turn.store.messages
        first = await turn.reply(model="m")
        first.append_text("Let me count. ")
        first.add_tool_call(ToolCall("call_1", "word_count", '{"text": "hi"}', finished=True))
        first.add_finish(FinishReason.TOOL_USE)
        await messages.update(first)
        await messages.create(
            turn.session_id, role=Role.TOOL, parts=[ToolResult("call_1", "word_count", "2")]
        )
        answer = await turn.reply(model="m")
        for word in f"You said {turn.text!r} .".split():
            answer.append_text(word + " ")
            await messages.update(answer)
            await asyncio.sleep(0.005)
            if self.hold:
                self.streaming.set()
                await asyncio.wait_for(self._release.wait(), WAIT)
                self.hold = False
        answer.add_finish(FinishReason.END_TURN)
        await messages.update(answer)


@pytest.fixture
def agent() -> Agent:
    return Agent()


@pytest.fixture
async def chat_url(store: Store, agent: Agent) -> AsyncIterator[str]:
    async with (
        Dispatcher(store, agent, FAST) as dispatcher,
        serving(
            create_app(store, dispatcher=dispatcher, keepalive=0.5, max_body=64 * 1024)
        ) as server,
    ):
        yield server.url


def body(
    chat_id: str = "chat0000abcd1234",
    text: str = "hello there",
    *,
    trigger: str = "submit-message",
    user_id: str = "ui-user-1",
    message_id: str | None = None,
    before: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A body as ``DefaultChatTransport`` sends it."""
    return {
        "id": chat_id,
        "messages": [
            *(before or []),
            {"id": user_id, "role": "user", "parts": [{"type": "text", "text": text}]},
        ],
        "trigger": trigger,
        "messageId": message_id,
    }


async def read_stream(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a UI message stream, decoded (``[DONE]`` as the string)."""
    assert response.status_code == 200, await response.aread()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    text = ""
    async for piece in response.aiter_text():
        text += piece
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def post_chat(url: str, payload: dict[str, Any]) -> list[Any]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
        client.stream("POST", "/api/chat", json=payload) as response,
    ):
        return await read_stream(response)


def assemble(chunks: list[Any]) -> dict[str, Any]:
    """What the chunks build: the text per part id, the tool states, the step count; checks
    the stream's shape on the way (one start, balanced steps, finish then [DONE])."""
    assert chunks[-1] == "[DONE]" and chunks[-2]["type"] == "finish", chunks[-3:]
    assert [c["type"] for c in chunks[:1]] == ["start"]
    assert sum(c["type"] == "start" for c in chunks[:-1]) == 1
    texts: dict[str, str] = {}
    opened: list[str] = []
    steps = 0
    depth = 0
    tools: dict[str, list[str]] = {}
    for chunk in chunks[:-1]:
        kind = chunk["type"]
        if kind == "start-step":
            assert depth == 0
            depth, steps = 1, steps + 1
        elif kind == "finish-step":
            assert depth == 1
            depth = 0
        elif kind == "text-start":
            assert chunk["id"] not in opened, f"part id {chunk['id']} reused"
            opened.append(chunk["id"])
            texts[chunk["id"]] = ""
        elif kind == "text-delta":
            texts[chunk["id"]] += chunk["delta"]
        elif kind.startswith("tool-"):
            tools.setdefault(chunk["toolCallId"], []).append(kind)
    assert depth == 0
    return {"texts": list(texts.values()), "steps": steps, "tools": tools, "start": chunks[0]}


async def input_count(store: Store) -> int:
    def count(tx: Any) -> int:
        from messagestore._dispatch._tables import dispatch_inputs

        return int(tx.conn.execute(select(func.count()).select_from(dispatch_inputs)).scalar())

    return await store.transaction(count, write=False)


async def test_a_submitted_message_streams_its_whole_turn_to_the_finish(
    store: Store, chat_url: str
) -> None:
    chunks = await post_chat(chat_url, body(text="hello there"))
    built = assemble(chunks)
    stored = await store.messages.list("chat0000abcd1234")
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert stored[0].text == "hello there"
    assert built["steps"] == 3
    assert built["texts"] == [stored[1].text, stored[3].text]
    assert built["tools"] == {
        "call_1": [
            "tool-input-start",
            "tool-input-delta",
            "tool-input-available",
            "tool-output-available",
        ]
    }
    assert chunks[-2]["finishReason"] == "stop"
    session = await store.sessions.get("chat0000abcd1234")
    assert session.title == "hello there"
    turn_id = built["start"]["messageId"]
    assert built["start"]["messageMetadata"]["turnId"] == turn_id


async def test_a_repeated_post_submits_nothing_and_streams_the_same_turn(
    store: Store, chat_url: str, agent: Agent
) -> None:
    first = assemble(await post_chat(chat_url, body()))
    again = assemble(await post_chat(chat_url, body()))
    assert again == first  # the same turn (the same message id), the same parts
    assert agent.turns == 1 and await input_count(store) == 1
    assert len(await store.messages.list_user_messages("chat0000abcd1234")) == 1


async def test_a_repeated_post_while_streaming_joins_the_live_turn(
    store: Store, chat_url: str
) -> None:
    agent_hold = Agent(hold=True)
    async with (
        Dispatcher(store, agent_hold, FAST) as dispatcher,
        serving(create_app(store, dispatcher=dispatcher, keepalive=0.5)) as server,
    ):
        first = asyncio.create_task(post_chat(server.url, body(chat_id="held")))
        async with asyncio.timeout(WAIT):
            await agent_hold.streaming.wait()
        second = asyncio.create_task(post_chat(server.url, body(chat_id="held")))
        resumed = asyncio.create_task(_get_stream(server.url, "held"))
        await asyncio.sleep(0.3)  # let both connect while the reply is still open
        agent_hold.release()
        async with asyncio.timeout(WAIT):
            one, two, three = await asyncio.gather(first, second, resumed)
    assert assemble(one)["texts"] == assemble(two)["texts"] == assemble(three)["texts"]
    assert agent_hold.turns == 1 and await input_count(store) == 1


async def _get_stream(url: str, chat_id: str) -> list[Any]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
        client.stream("GET", f"/api/chat/{chat_id}/stream") as response,
    ):
        return await read_stream(response)


async def test_regenerate_leaves_the_user_message_once_and_one_new_reply(
    store: Store, chat_url: str, agent: Agent
) -> None:
    first = assemble(await post_chat(chat_url, body(text="count me")))
    old = await store.messages.list("chat0000abcd1234")
    turn_id = first["start"]["messageId"]
    again = assemble(
        await post_chat(
            chat_url, body(text="count me", trigger="regenerate-message", message_id=turn_id)
        )
    )
    assert again["start"]["messageId"] != turn_id
    stored = await store.messages.list("chat0000abcd1234")
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert stored[0].text == "count me"
    assert not {m.id for m in old} & {m.id for m in stored}
    assert again["texts"] == [stored[1].text, stored[3].text]
    assert agent.turns == 2
    # The same regenerate again (a retried request) submits nothing new.
    await post_chat(
        chat_url, body(text="count me", trigger="regenerate-message", message_id=turn_id)
    )
    assert agent.turns == 2 and len(await store.messages.list("chat0000abcd1234")) == 4


async def test_regenerate_keeps_earlier_turns(store: Store, chat_url: str) -> None:
    one = body(text="first question", user_id="u1")
    await post_chat(chat_url, one)
    history = [
        one["messages"][0],
        {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "..."}]},
    ]
    two = body(text="second question", user_id="u2", before=history)
    await post_chat(chat_url, two)
    two["trigger"] = "regenerate-message"
    await post_chat(chat_url, two)
    users = [m.text for m in await store.messages.list_user_messages("chat0000abcd1234")]
    assert users == ["first question", "second question"]
    assert len(await store.messages.list("chat0000abcd1234")) == 8
    assert (await store.sessions.get("chat0000abcd1234")).title == "first question"


async def test_the_stream_route_answers_204_without_a_pending_or_running_turn(
    store: Store, chat_url: str
) -> None:
    async with httpx.AsyncClient(base_url=chat_url, timeout=WAIT) as client:
        never = await client.get("/api/chat/never-seen/stream")
        assert never.status_code == 204 and never.content == b""
        await post_chat(chat_url, body())
        done = await client.get("/api/chat/chat0000abcd1234/stream")
        assert done.status_code == 204


async def test_the_stream_route_replays_a_running_turn_from_its_start(store: Store) -> None:
    agent = Agent(hold=True)
    async with (
        Dispatcher(store, agent, FAST) as dispatcher,
        serving(create_app(store, dispatcher=dispatcher, keepalive=0.5)) as server,
    ):
        posted = asyncio.create_task(post_chat(server.url, body(chat_id="resume-me")))
        async with asyncio.timeout(WAIT):
            await agent.streaming.wait()
        resumed = asyncio.create_task(_get_stream(server.url, "resume-me"))
        await asyncio.sleep(0.3)
        agent.release()
        async with asyncio.timeout(WAIT):
            original, replay = await asyncio.gather(posted, resumed)
    assert assemble(replay)["texts"] == assemble(original)["texts"]
    assert assemble(replay)["steps"] == 3


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"id": "c", "trigger": "submit-message"}, 422, "'messages'"),
    ({"id": "c", "trigger": "submit-message", "messages": []}, 422, "'messages'"),
    ({"id": "c", "trigger": "submit-message", "messages": "hi"}, 422, "'messages'"),
    (
        {
            "id": "c",
            "trigger": "submit-message",
            "messages": [{"id": "a", "role": "assistant", "parts": []}],
        },
        422,
        "no user message",
    ),
    ({**body(), "trigger": "delete-everything"}, 422, "'trigger'"),
    ({**body(), "trigger": None}, 422, "'trigger'"),
    ({**body(), "id": ""}, 422, "'id'"),
    ({**body(), "id": 7}, 422, "'id'"),
    ({**body(), "id": "x" * 300}, 422, "'id'"),
    ({**body(), "messageId": 5}, 422, "'messageId'"),
    (
        {**body(), "messages": [{"id": "u", "role": "user", "parts": [{"type": "text"}]}]},
        422,
        "messages[0].parts[0].text",
    ),
    (
        {
            **body(),
            "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": " "}]}],
        },
        422,
        "holds no text",
    ),
    ({**body(), "messages": [{"role": "user", "parts": []}]}, 422, "messages[0].id"),
    ({**body(), "messages": [{"id": "u", "role": "robot", "parts": []}]}, 422, "role"),
    ({**body(), "messages": [{"id": "u", "role": "user", "parts": {}}]}, 422, "parts"),
    ({**body(), "messages": [7]}, 422, "messages[0]"),
    ([body()], 422, "JSON object"),
    (body(text="x" * 100_000), 413, "limit"),
]


@pytest.mark.parametrize(("payload", "status", "names"), BAD_BODIES)
async def test_a_malformed_body_is_refused_naming_the_field_and_submits_nothing(
    store: Store, chat_url: str, payload: Any, status: int, names: str
) -> None:
    async with httpx.AsyncClient(base_url=chat_url, timeout=WAIT) as client:
        response = await client.post("/api/chat", json=payload)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["status"] == status and names in error["message"], error
    assert await input_count(store) == 0
    assert await store.sessions.list() == []


async def test_the_chat_routes_keep_the_guards_of_every_write(store: Store, chat_url: str) -> None:
    async with httpx.AsyncClient(base_url=chat_url, timeout=WAIT) as client:
        cross = await client.post(
            "/api/chat", json=body(), headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        plain = await client.post(
            "/api/chat",
            content=json.dumps(body()),
            headers={"content-type": "text/plain"},
        )
        assert plain.status_code == 415
        bare = await client.post("/api/chat")
        assert bare.status_code == 415
    assert await input_count(store) == 0 and await store.sessions.list() == []


async def test_without_a_dispatcher_the_chat_routes_answer_503(store: Store) -> None:
    async with (
        serving(create_app(store)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        response = await client.post("/api/chat", json=body())
        assert response.status_code == 503
        assert (await client.get("/api/chat/x/stream")).status_code == 503


async def test_a_full_server_refuses_the_post_before_submitting_anything(store: Store) -> None:
    agent = Agent()
    async with (
        Dispatcher(store, agent, FAST) as dispatcher,
        serving(create_app(store, dispatcher=dispatcher, max_streams=1, keepalive=0.5)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
        client.stream("GET", "/api/events") as held,  # the one stream it serves
    ):
        assert held.status_code == 200
        refused = await client.post("/api/chat", json=body())
        assert refused.status_code == 503 and refused.headers["retry-after"]
    assert await input_count(store) == 0 and await store.sessions.list() == []


async def test_input_stopped_before_its_turn_ends_its_stream_with_abort(store: Store) -> None:
    async def never(turn: Turn) -> None:
        raise AssertionError("nothing runs turns here")

    class Submitting(Dispatcher):
        """A dispatcher that tells when the route's input is committed."""

        committed = asyncio.Event()

        async def submit(self, *args: Any, **kwargs: Any) -> Any:
            receipt = await super().submit(*args, **kwargs)
            self.committed.set()
            return receipt

    # No dispatcher runs turns: the input waits, and the stream with it, until it is stopped.
    web = Submitting(store, never, FAST)
    async with serving(create_app(store, dispatcher=web, keepalive=0.2)) as server:
        waiting = asyncio.create_task(post_chat(server.url, body(chat_id="stopped")))
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client:
            async with asyncio.timeout(WAIT):
                await web.committed.wait()
            stopped = await client.post("/api/sessions/stopped/stop", json={})
            assert stopped.json() == {"stopped": True}
        async with asyncio.timeout(WAIT):
            chunks = await waiting
    assert [c if isinstance(c, str) else c["type"] for c in chunks] == ["abort", "finish", "[DONE]"]
    assert "cancelled" in chunks[0]["reason"]


async def test_a_failing_turn_ends_its_stream_with_an_error_and_the_finish(store: Store) -> None:
    async def failing(turn: Turn) -> None:
        reply = await turn.reply()
        reply.append_text("about to fail")
        await turn.store.messages.update(reply)
        raise RuntimeError("the model is down")

    async with (
        Dispatcher(store, failing, FAST) as dispatcher,
        serving(create_app(store, dispatcher=dispatcher, keepalive=0.5)) as server,
    ):
        chunks = await post_chat(server.url, body(chat_id="failing"))
    kinds = [c if isinstance(c, str) else c["type"] for c in chunks]
    assert kinds[-3:] == ["error", "finish", "[DONE]"], kinds
    assert chunks[-2]["finishReason"] == "error"
    assert assemble(chunks)["texts"] == ["about to fail"]


async def test_an_edited_message_replaces_the_turn_it_started(
    store: Store, chat_url: str, agent: Agent
) -> None:
    await post_chat(chat_url, body(text="first wording", user_id="u1"))
    # useChat's sendMessage({text, messageId}) keeps the message's id and sends the new text.
    edited = body(text="second wording", user_id="u1", message_id="u1")
    built = assemble(await post_chat(chat_url, edited))
    stored = await store.messages.list("chat0000abcd1234")
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert stored[0].text == "second wording" and "second wording" in stored[3].text
    assert built["texts"] == [stored[1].text, stored[3].text]
    await post_chat(chat_url, edited)  # the same edit again submits nothing
    assert agent.turns == 2 and len(await store.messages.list("chat0000abcd1234")) == 4


async def test_a_reply_its_turn_left_unfinished_is_closed_when_the_turn_ends(
    store: Store,
) -> None:
    async def leaves_it_open(turn: Turn) -> None:
        # Created past turn.reply(), so the dispatcher does not finish it when the turn ends.
        await turn.store.messages.create(
            turn.session_id, role=Role.ASSISTANT, parts=[Text("left open")]
        )

    async with (
        Dispatcher(store, leaves_it_open, FAST) as dispatcher,
        serving(create_app(store, dispatcher=dispatcher, keepalive=0.5)) as server,
    ):
        async with asyncio.timeout(WAIT):
            chunks = await post_chat(server.url, body(chat_id="left-open"))
    built = assemble(chunks)
    assert built["texts"] == ["left open"] and built["steps"] == 1
    kinds = [c if isinstance(c, str) else c["type"] for c in chunks]
    assert kinds[-4:] == ["text-end", "finish-step", "finish", "[DONE]"]
    assert chunks[-2]["messageMetadata"]["turnState"] == "completed"


async def test_a_page_on_an_allowed_origin_can_chat_across_origins(store: Store) -> None:
    """The README's setup: the page on http://localhost:3000, the server with that origin in
    ``--cors-origin``: the browser's preflight, the POST and the reconnect all pass."""
    page = "http://localhost:3000"
    agent = Agent()
    app = create_app(store, dispatcher=Dispatcher(store, agent, FAST), cors_origins=[page])
    async with (
        Dispatcher(store, agent, FAST) as runner,
        serving(app) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        del runner  # runs the turns; the app's own dispatcher only takes input
        preflight = await client.options(
            "/api/chat",
            headers={
                "origin": page,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == page
        headers = {"origin": page, "sec-fetch-site": "cross-site"}
        async with client.stream("POST", "/api/chat", json=body(), headers=headers) as response:
            assert response.headers["access-control-allow-origin"] == page
            assert (
                "x-vercel-ai-ui-message-stream" in response.headers["access-control-expose-headers"]
            )
            assert assemble(await read_stream(response))["steps"] == 3
        reconnect = await client.get("/api/chat/chat0000abcd1234/stream", headers=headers)
        assert reconnect.status_code == 204
        assert reconnect.headers["access-control-allow-origin"] == page
        elsewhere = await client.post(
            "/api/chat", json=body(), headers={"origin": "http://localhost:4000"}
        )
        assert elsewhere.status_code == 403


async def test_regenerate_while_the_reply_streams_replaces_it(store: Store) -> None:
    agent = Agent(hold=True)
    async with (
        Dispatcher(store, agent, FAST) as dispatcher,
        serving(create_app(store, dispatcher=dispatcher, keepalive=0.5)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        first = asyncio.create_task(post_chat(server.url, body(chat_id="redo")))
        async with asyncio.timeout(WAIT):
            await agent.streaming.wait()
        redo = body(chat_id="redo", trigger="regenerate-message")
        async with client.stream("POST", "/api/chat", json=redo) as response:
            # Answered: the running turn was stopped, the input submitted again, and the
            # stored messages from the user message on deleted.
            agent.release()
            again = assemble(await read_stream(response))
        async with asyncio.timeout(WAIT):
            old = await first
    assert old[-2]["type"] == "finish"  # the first stream ends too (stopped or finished)
    stored = await store.messages.list("redo")
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert again["texts"] == [stored[1].text, stored[3].text]
    assert stored[3].is_finished and stored[3].finish.reason is FinishReason.END_TURN  # type: ignore[union-attr]
    assert agent.turns == 2
