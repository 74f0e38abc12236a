"""The LangChain adapter against the real langchain-core, on SQLite and PostgreSQL.

Chains run offline on langchain-core's own fake chat model (``GenericFakeChatModel``, which
streams its reply in chunks) under ``RunnableWithMessageHistory``, from async code, from a
worker thread without a loop (as a Flask or Django view would), and against a store whose loop
runs in another thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from messagestore import (
    Binary,
    FinishReason,
    ImageURL,
    InvalidMessage,
    Message,
    Reasoning,
    Role,
    Store,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore.adapters.langchain import MessageStoreChatMessageHistory

MESSAGE_MIME = "application/vnd.langchain.message+json"
WAIT = 30  # seconds: the bound on every wait in this file

# RunnableWithMessageHistory is deprecated in langchain-core 1.x, and still what the issue asks
# the adapter to work under.
uses_runnable_with_history = pytest.mark.filterwarnings(
    "ignore:RunnableWithMessageHistory is deprecated"
)

EVERY_KIND: list[BaseMessage] = [
    SystemMessage("You are terse.", id="sys-1"),
    HumanMessage(
        [
            {"type": "text", "text": "What is this? ünïcödé \ud800 \x00"},
            {
                "type": "image_url",
                "image_url": {"url": "https://example.com/c.png", "detail": "low"},
            },
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
        name="alice",
        id="h-1",
        additional_kwargs={"client": {"trace": [1, 2.5, None, True]}},
    ),
    AIMessage(
        [
            {"type": "reasoning", "reasoning": "They want a name."},
            {"type": "text", "text": "Let me look."},
        ],
        id="ai-1",
        tool_calls=[
            {"id": "call_1", "name": "lookup", "args": {"q": "cat", "n": 1}},
            {"id": None, "name": "no_id", "args": {}},
        ],
        invalid_tool_calls=[
            {
                "id": "call_2",
                "name": "broken",
                "args": "{not json",
                "error": "bad",
                "type": "invalid_tool_call",
            }
        ],
        usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
    ),
    ToolMessage("a cat", tool_call_id="call_1", name="lookup", artifact={"hits": 1}),
    ToolMessage("no such tool", tool_call_id="call_x", status="error"),
    FunctionMessage(content="legacy output", name="old_function"),
    ChatMessage(content="Looks right.", role="critic"),
    ChatMessage(content="From the assistant role.", role="assistant"),
    AIMessageChunk(content="partial reply", id="chunk-1", chunk_position="last"),
    HumanMessageChunk(content="partial question"),
    RemoveMessage(id="h-0"),
    AIMessage("Done."),
]


async def store_messages(history: MessageStoreChatMessageHistory) -> list[Message]:
    store_session_id = await history.store_session_id()
    assert store_session_id is not None
    return await history.store.messages.list(store_session_id)


# -- mapping ---------------------------------------------------------------------------------


async def test_every_kind_of_message_round_trips(store: Store) -> None:
    history = MessageStoreChatMessageHistory("zoo", store)
    await history.aadd_messages(EVERY_KIND[:3])
    await history.aadd_messages(EVERY_KIND[3:])
    assert await history.aget_messages() == EVERY_KIND
    assert [type(m) for m in await history.aget_messages()] == [type(m) for m in EVERY_KIND]
    assert await MessageStoreChatMessageHistory("zoo", store).aget_messages() == EVERY_KIND


async def test_each_message_is_shown_as_typed_parts(store: Store) -> None:
    history = MessageStoreChatMessageHistory("shown", store)
    await history.aadd_messages(EVERY_KIND)
    messages = await store_messages(history)
    assert [m.role for m in messages] == [
        Role.SYSTEM,
        Role.USER,
        Role.ASSISTANT,
        Role.TOOL,
        Role.TOOL,
        Role.TOOL,
        Role.USER,
        Role.ASSISTANT,
        Role.ASSISTANT,
        Role.USER,
        Role.SYSTEM,
        Role.ASSISTANT,
    ]
    assert all(m.provider == "langchain" for m in messages)
    system, human, ai, tool, tool_error, function = messages[:6]
    assert system.text == "You are terse."
    assert human.text == "What is this? ünïcödé \ud800 \x00"
    assert [p for p in human.parts if isinstance(p, ImageURL)] == [
        ImageURL("https://example.com/c.png", "low")
    ]
    assert isinstance(ai.reasoning, Reasoning) and ai.reasoning.thinking == "They want a name."
    assert ai.text == "Let me look."
    # Only calls a ToolMessage can answer are shown; the exact message keeps the others.
    assert ai.tool_calls == [ToolCall("call_1", "lookup", '{"q": "cat", "n": 1}', finished=True)]
    assert ai.finish is not None and ai.finish.reason is FinishReason.TOOL_USE
    assert tool.tool_results == [ToolResult("call_1", "lookup", "a cat")]
    assert tool_error.tool_results == [ToolResult("call_x", "", "no such tool", is_error=True)]
    assert function.tool_results == [ToolResult("old_function", "old_function", "legacy output")]
    assert messages[-1].finish is not None
    assert messages[-1].finish.reason is FinishReason.END_TURN
    for message, original in zip(messages, EVERY_KIND, strict=True):
        (exact,) = [p for p in message.parts if isinstance(p, Binary)]
        assert (exact.path, exact.mime_type) == (f"{original.type}.json", MESSAGE_MIME)


async def test_messages_written_by_other_code_read_as_langchain_messages(store: Store) -> None:
    chat = await store.sessions.create("an agent loop's conversation")
    write = store.messages.create
    await write(chat.id, role=Role.SYSTEM, parts=[Text("Be brief.")])
    await write(chat.id, role=Role.USER, parts=[Text("Weather?")])
    await write(
        chat.id,
        role=Role.ASSISTANT,
        parts=[
            Text("Checking."),
            ToolCall("c1", "weather", '{"city": "Paris"}', finished=True),
            ToolCall("c2", "raw", "not json", finished=True),
            ToolResult("c1", "weather", "sunny"),
        ],
    )
    await write(chat.id, role=Role.TOOL, parts=[ToolResult("c2", "raw", "failed", is_error=True)])
    await write(chat.id, role=Role.ASSISTANT, parts=[])  # nothing to say: not a message
    history = MessageStoreChatMessageHistory(chat.id, store)
    messages = await history.aget_messages()
    assert messages[:2] == [SystemMessage("Be brief."), HumanMessage("Weather?")]
    ai = messages[2]
    assert isinstance(ai, AIMessage) and ai.text == "Checking."
    assert [(c["id"], c["name"], c["args"]) for c in ai.tool_calls] == [
        ("c1", "weather", {"city": "Paris"})
    ]
    assert [(c["id"], c["args"]) for c in ai.invalid_tool_calls] == [("c2", "not json")]
    assert messages[3:] == [
        ToolMessage("sunny", tool_call_id="c1", name="weather"),
        ToolMessage("failed", tool_call_id="c2", name="raw", status="error"),
    ]


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        ("just text", r"messages\[1\] is a str, not a langchain_core BaseMessage"),
        (
            HumanMessage("x", additional_kwargs={"blob": b"\x00\x01"}),
            r"messages\[1\] \(HumanMessage\)\['additional_kwargs'\]\['blob'\] is a bytes",
        ),
        (
            AIMessage("x", response_metadata={"score": float("inf")}),
            r"\['response_metadata'\]\['score'\] is inf",
        ),
    ],
)
async def test_an_invalid_message_is_refused_naming_the_field(
    store: Store, message: Any, complaint: str
) -> None:
    history = MessageStoreChatMessageHistory("bad", store)
    with pytest.raises(InvalidMessage, match=complaint):
        await history.aadd_messages([HumanMessage("fine"), message])
    assert await history.aget_messages() == []
    with pytest.raises(InvalidMessage, match="takes a sequence of messages"):
        await history.aadd_messages(HumanMessage("one"))  # type: ignore[arg-type]


async def test_a_corrupt_stored_message_is_skipped_and_kept(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    history = MessageStoreChatMessageHistory("corrupt", store)
    await history.aadd_messages([HumanMessage("before")])
    target = await history.store_session_id()
    assert target is not None
    broken = Binary("human.json", MESSAGE_MIME, b'{"type": "martian", "data": {}}')
    bad = await store.messages.create(target, role=Role.USER, parts=[broken])
    await history.aadd_messages([AIMessage("after")])
    with caplog.at_level(logging.WARNING, logger="messagestore.adapters.langchain"):
        assert await history.aget_messages() == [HumanMessage("before"), AIMessage("after")]
    assert "skipping a corrupt message" in caplog.text
    assert (await store.messages.get(bad.id)).parts == [broken]


async def test_clear_deletes_the_messages_and_keeps_the_session(store: Store) -> None:
    history = MessageStoreChatMessageHistory("clear", store)
    await history.aadd_messages([HumanMessage("a"), AIMessage("b")])
    store_session_id = await history.store_session_id()
    await history.aclear()
    assert await history.aget_messages() == []
    assert await history.store_session_id() == store_session_id
    await asyncio.to_thread(history.clear)  # the blocking twin, from a worker thread
    await history.aadd_messages([HumanMessage("c")])
    assert await history.aget_messages() == [HumanMessage("c")]
    assert [s.title for s in await store.sessions.list()] == ["langchain:clear"]


async def test_concurrent_first_writes_make_one_session_and_keep_batches_whole(
    store: Store,
) -> None:
    batches = [[HumanMessage(f"q{i}"), AIMessage(f"a{i}")] for i in range(10)]
    histories = [MessageStoreChatMessageHistory("busy", store) for _ in range(3)]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(
            *(histories[i % 3].aadd_messages(batch) for i, batch in enumerate(batches))
        )
    assert [s.title for s in await store.sessions.list()] == ["langchain:busy"]
    stored = await histories[0].aget_messages()
    pairs = [stored[i : i + 2] for i in range(0, len(stored), 2)]
    assert sorted(pairs, key=lambda p: str(p[0].content)) == batches


# -- under RunnableWithMessageHistory ----------------------------------------------------------


def chat_chain(store: Store, replies: list[AIMessage | str], seen: list[list[BaseMessage]]) -> Any:
    """A prompt, a recorder of what the model is sent, the fake streaming model, with history.

    The histories are made where the chain runs (a worker thread, for the blocking calls), so
    they are told the store's loop: this one.
    """
    loop = asyncio.get_running_loop()
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )

    def record(value: Any) -> Any:
        seen.append(list(value.to_messages()))
        return value

    model = GenericFakeChatModel(messages=iter(replies))
    return RunnableWithMessageHistory(
        prompt | RunnableLambda(record) | model,
        lambda session_id: MessageStoreChatMessageHistory(session_id, store, loop=loop),
        input_messages_key="question",
        history_messages_key="history",
    )


@uses_runnable_with_history
async def test_runnable_with_message_history_async(store: Store) -> None:
    calls_tool = AIMessage(
        "", tool_calls=[{"id": "call_1", "name": "weather", "args": {"city": "Paris"}}]
    )
    seen: list[list[BaseMessage]] = []
    chain = chat_chain(store, [calls_tool, "It is sunny in Paris."], seen)
    config: Any = {"configurable": {"session_id": "user_1"}}

    first = await chain.ainvoke({"question": "Weather in Paris?"}, config=config)
    assert first.tool_calls[0]["args"] == {"city": "Paris"}
    chunks = [c async for c in chain.astream({"question": "So?"}, config=config)]
    assert len(chunks) > 1  # the fake model streamed its reply in pieces
    assert "".join(str(c.content) for c in chunks) == "It is sunny in Paris."

    history = await MessageStoreChatMessageHistory("user_1", store).aget_messages()
    assert [type(m) for m in history] == [HumanMessage, AIMessage, HumanMessage, AIMessageChunk]
    assert history[:3] == [HumanMessage("Weather in Paris?"), first, HumanMessage("So?")]
    assert history[3].content == "It is sunny in Paris."
    # The second call was sent the first turn, tool call included, from the store.
    assert seen[1][1:3] == [HumanMessage("Weather in Paris?"), first]
    shown = await store_messages(MessageStoreChatMessageHistory("user_1", store))
    assert [m.role for m in shown] == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT]
    assert shown[1].tool_calls == [ToolCall("call_1", "weather", '{"city": "Paris"}', True)]
    assert shown[3].text == "It is sunny in Paris."


@uses_runnable_with_history
async def test_runnable_with_message_history_sync_from_a_worker_thread(store: Store) -> None:
    seen: list[list[BaseMessage]] = []
    chain = chat_chain(store, ["Hello there.", "Still here."], seen)
    config: Any = {"configurable": {"session_id": "user_2"}}

    def view() -> list[str]:  # a Flask or Django view: a thread with no event loop
        first = chain.invoke({"question": "Hi"}, config=config)
        second = "".join(str(c.content) for c in chain.stream({"question": "Hm?"}, config=config))
        return [str(first.content), second]

    async with asyncio.timeout(WAIT):
        assert await asyncio.to_thread(view) == ["Hello there.", "Still here."]
    history = MessageStoreChatMessageHistory("user_2", store)
    assert [m.content for m in await history.aget_messages()] == [
        "Hi",
        "Hello there.",
        "Hm?",
        "Still here.",
    ]
    assert [m.content for m in seen[1][1:3]] == ["Hi", "Hello there."]


async def test_a_blocking_method_inside_the_store_loop_names_the_async_one(store: Store) -> None:
    history = MessageStoreChatMessageHistory("inside", store)
    with pytest.raises(RuntimeError, match=r"await history\.aget_messages\(\)"):
        _ = history.messages
    with pytest.raises(RuntimeError, match=r"await history\.aadd_messages\(\)"):
        history.add_messages([HumanMessage("x")])
    with pytest.raises(RuntimeError, match=r"await history\.aclear\(\)"):
        history.clear()
    assert await history.aget_messages() == []


# -- the store's loop in another thread ----------------------------------------------------------


@contextmanager
def store_in_a_thread(url: str) -> Iterator[tuple[Store, asyncio.AbstractEventLoop]]:
    """A store opened on an event loop that runs in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="store-loop")
    thread.start()

    async def opened() -> Store:
        return await open_store(url)

    try:
        store = asyncio.run_coroutine_threadsafe(opened(), loop).result(WAIT)
        try:
            yield store, loop
        finally:
            asyncio.run_coroutine_threadsafe(store.close(), loop).result(WAIT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def test_blocking_methods_reach_a_store_loop_in_another_thread(db_url: str) -> None:
    with store_in_a_thread(db_url) as (store, loop):
        history = MessageStoreChatMessageHistory("threads", store, loop=loop, timeout=WAIT)
        history.add_messages([HumanMessage("from a thread without a loop")])
        history.add_ai_message("an answer")
        assert history.messages == [
            HumanMessage("from a thread without a loop"),
            AIMessage("an answer"),
        ]

        async def from_another_loop() -> list[BaseMessage]:
            await history.aadd_messages([HumanMessage("from another loop")])
            return await history.aget_messages()

        assert [m.content for m in asyncio.run(from_another_loop())] == [
            "from a thread without a loop",
            "an answer",
            "from another loop",
        ]
        history.clear()
        assert history.messages == []


def test_a_blocking_method_gives_up_after_its_timeout(db_url: str) -> None:
    with store_in_a_thread(db_url) as (store, loop):
        history = MessageStoreChatMessageHistory("slow", store, loop=loop, timeout=0.2)
        release = threading.Event()
        loop.call_soon_threadsafe(release.wait, WAIT)  # the store's loop is stuck
        try:
            with pytest.raises(TimeoutError, match=r"messages did not finish within 0\.2 s"):
                _ = history.messages
        finally:
            release.set()
        history = MessageStoreChatMessageHistory("slow", store, loop=loop, timeout=WAIT)
        assert history.messages == []


def test_a_history_made_where_no_loop_runs_uses_the_store_loop(db_url: str) -> None:
    with store_in_a_thread(db_url) as (store, loop):
        history = MessageStoreChatMessageHistory("unknown", store)  # no loop here, none given
        history.add_user_message("found its way")
        assert history.messages == [HumanMessage("found its way")]
        other = asyncio.new_event_loop()
        try:
            with pytest.raises(ValueError, match=r"loop= must be the store's event loop"):
                MessageStoreChatMessageHistory("other", store, loop=other)
        finally:
            other.close()
        assert MessageStoreChatMessageHistory("same", store, loop=loop).messages == []


def test_a_store_loop_that_is_idle_is_driven_by_the_blocking_call(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    try:

        async def opened() -> Store:
            return await open_store(db_url)

        store = loop.run_until_complete(opened())
        history = MessageStoreChatMessageHistory("script", store, loop=loop)
        history.add_user_message("from a script")
        assert history.messages == [HumanMessage("from a script")]
        loop.run_until_complete(store.close())
    finally:
        loop.close()


def test_session_id_is_checked() -> None:
    store: Any = object()
    with pytest.raises(TypeError, match="session_id must be a str"):
        MessageStoreChatMessageHistory(7, store)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="session_id must not be empty"):
        MessageStoreChatMessageHistory("", store)
