"""The OpenAI Agents SDK adapter against the real SDK, offline, on SQLite and PostgreSQL.

Runs use the SDK's own scripted model (``agents.testing.ScriptedModel``): real ``Runner.run``
and ``Runner.run_streamed`` calls, real tool calls, no network. What the SDK's own
``SQLiteSession`` stores for the same script is the reference the adapter's items must equal.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

import pytest
from agents import (
    Agent,
    MaxTurnsExceeded,
    ModelSettings,
    Runner,
    Session,
    SessionSettings,
    SQLiteSession,
    TResponseInputItem,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import ModelTracing
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses import ResponseReasoningItem
from openai.types.responses.response_reasoning_item import Summary

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
from messagestore.adapters.openai_agents import MessageStoreSession, record_stream
from pubsub import Subscription

set_tracing_disabled(True)  # no trace export: these runs are offline

ITEM_MIME = "application/vnd.openai-agents.item+json"
WAIT = 30  # seconds: the bound on every wait in this file


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def weather_turn(n: int) -> list[Any]:
    """One turn's model steps: reasoning and a tool call, then the answer."""
    return [
        [
            ResponseReasoningItem(
                id=f"rs_{n}",
                type="reasoning",
                summary=[Summary(text=f"look up the weather ({n})", type="summary_text")],
            ),
            function_call("get_weather", {"city": f"Paris {n}"}, call_id=f"call_{n}"),
        ],
        [assistant_message(f"It is sunny in Paris {n}.", item_id=f"msg_{n}")],
    ]


def weather_agent(turns: int) -> tuple[Agent[Any], ScriptedModel]:
    model = ScriptedModel([step for n in range(turns) for step in weather_turn(n)])
    return Agent(name="weather", model=model, tools=[get_weather]), model


async def reference_items(
    prompts: list[str], *, streamed: bool
) -> tuple[list[TResponseInputItem], ScriptedModel]:
    """What the SDK's own SQLiteSession stores for the weather script, and the model used."""
    agent, model = weather_agent(len(prompts))
    session = SQLiteSession("reference")
    try:
        for prompt in prompts:
            if streamed:
                result = Runner.run_streamed(agent, prompt, session=session)
                async for _ in result.stream_events():
                    pass
            else:
                await Runner.run(agent, prompt, session=session)
        return await session.get_items(), model
    finally:
        session.close()


def user(text: str) -> TResponseInputItem:
    return cast(TResponseInputItem, {"role": "user", "content": text})


async def store_messages(session: MessageStoreSession) -> list[Message]:
    store_session_id = await session.store_session_id()
    assert store_session_id is not None
    return await session.store.messages.list(store_session_id)


def item_parts(message: Message) -> list[Binary]:
    return [p for p in message.parts if isinstance(p, Binary) and p.mime_type == ITEM_MIME]


# -- real runs -------------------------------------------------------------------------------


async def test_runner_run_keeps_multi_turn_history_with_tool_calls(store: Store) -> None:
    prompts = ["Weather in Paris?", "And now?"]
    expected, reference_model = await reference_items(prompts, streamed=False)
    agent, model = weather_agent(len(prompts))
    session = MessageStoreSession("user_1", store)
    for prompt in prompts:
        result = await Runner.run(agent, prompt, session=session)
    assert result.final_output == "It is sunny in Paris 1."

    assert await session.get_items() == expected
    # The second turn replayed the first one to the model exactly as the SDK's own session did.
    assert model.calls[-1].input == reference_model.calls[-1].input
    assert len(model.calls[-1].input) == 9

    messages = await store_messages(session)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.ASSISTANT] * 2
    first_user, tool_step, answer = messages[:3]
    assert first_user.text == "Weather in Paris?"
    assert tool_step.reasoning is not None
    assert tool_step.reasoning.thinking == "look up the weather (0)"
    assert tool_step.tool_calls == [
        ToolCall("call_0", "get_weather", '{"city":"Paris 0"}', finished=True)
    ]
    assert tool_step.tool_results == [ToolResult("call_0", "get_weather", "sunny in Paris 0")]
    assert tool_step.finish is not None and tool_step.finish.reason is FinishReason.TOOL_USE
    assert answer.text == "It is sunny in Paris 0."
    assert answer.finish is not None and answer.finish.reason is FinishReason.END_TURN
    assert [len(item_parts(m)) for m in messages] == [1, 3, 1] * 2
    assert all(m.provider == "openai-agents" for m in messages)


async def test_run_streamed_with_record_stream_stores_each_turn_once(store: Store) -> None:
    prompts = ["Weather in Paris?", "And now?"]
    expected, _ = await reference_items(prompts, streamed=True)
    agent, _model = weather_agent(len(prompts))
    session = MessageStoreSession("user_1", store)
    recorded = []
    for prompt in prompts:
        streamed = Runner.run_streamed(agent, prompt, session=session)
        recorded.append(await record_stream(streamed, store, "user_1"))

    assert await session.get_items() == expected
    messages = await store_messages(session)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT] * 2
    assert [m.id for m in messages[1::2]] == [m.id for m in recorded]
    for n, message in enumerate(messages[1::2]):
        reasoning = message.reasoning
        assert reasoning is not None and reasoning.finished_at is not None
        assert reasoning.thinking == f"look up the weather ({n})"
        assert message.tool_calls == [
            ToolCall(f"call_{n}", "get_weather", f'{{"city":"Paris {n}"}}', finished=True)
        ]
        assert message.tool_results == [
            ToolResult(f"call_{n}", "get_weather", f"sunny in Paris {n}")
        ]
        assert message.text == f"It is sunny in Paris {n}."
        assert message.finish is not None and message.finish.reason is FinishReason.END_TURN
        assert len(item_parts(message)) == 4  # reasoning, call, output, answer: stored once
        assert message.model == "scripted-model"
    assert recorded[-1] == messages[-1]


async def split_stream(output: list[Any]) -> list[Any]:
    """The SDK's scripted stream events for ``output``, with text and tool arguments split
    into word-sized deltas, as a real model streams them."""
    probe = ScriptedModel([output])
    events = [
        event
        async for event in probe.stream_response(
            None,
            [],
            ModelSettings(),
            [],
            None,
            [],
            ModelTracing.DISABLED,
            previous_response_id=None,
            conversation_id=None,
            prompt=None,
        )
    ]
    split: list[Any] = []
    for event in events:
        if event.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
            split.extend(
                event.model_copy(update={"delta": piece})
                for piece in re.findall(r"\S+\s*|\s+", event.delta)
            )
        else:
            split.append(event)
    return split


async def assistant_states(events: Subscription[Message]) -> list[Message]:
    """Every written state of assistant messages, up to the first finished one."""
    seen: list[Message] = []
    async with events:
        async for event in events:
            if event.payload.role is Role.ASSISTANT:
                seen.append(event.payload)
                if event.payload.is_finished:
                    return seen
    raise AssertionError("the subscription ended before an assistant message finished")


async def test_record_stream_buffers_deltas_and_writes_terminal_changes_at_once(
    db_url: str,
) -> None:
    answer = "The weather in Paris is sunny and warm today."
    call = function_call("get_weather", {"city": "Paris", "unit": "celsius"}, call_id="call_w")
    steps = [
        ModelStep.stream(await split_stream([call]), output=[call]),
        ModelStep.stream(await split_stream([assistant_message(answer)])),
    ]
    agent = Agent(name="weather", model=ScriptedModel(steps), tools=[get_weather])
    # A window far longer than the test: only terminal changes and flushes write anything.
    async with open_store(db_url, debounce=60) as store:
        collector = asyncio.create_task(assistant_states(store.messages.subscribe()))
        before = store.messages.stats()
        streamed = Runner.run_streamed(agent, "Weather?", session=MessageStoreSession("s", store))
        message = await record_stream(streamed, store, "s")
        after = store.messages.stats()
        async with asyncio.timeout(WAIT):
            seen = await collector
    assert {m.id for m in seen} == {message.id}

    text_deltas = len(re.findall(r"\S+\s*", answer))
    assert text_deltas == 9
    # Every delta went through update(); the text deltas were merged in the buffer, not written.
    assert after.updates_accepted - before.updates_accepted > text_deltas
    assert after.deltas_coalesced - before.deltas_coalesced >= text_deltas - 1
    # Written states, in order: the call added (input still streaming), the call finished with
    # its whole input, its result, and the finish with the whole text.
    states = [
        ([(c.input, c.finished) for c in m.tool_calls], len(m.tool_results), m.text, m.finish)
        for m in seen
    ]
    full_input = '{"city":"Paris","unit":"celsius"}'
    added = states.index(([("", False)], 0, "", None))
    finished = states.index(([(full_input, True)], 0, "", None))
    answered = states.index(([(full_input, True)], 1, "", None))
    assert added < finished < answered < len(states) - 1
    assert all(text in ("", answer) for _, _, text, _ in states)  # no half text was written
    final = seen[-1]
    assert final.text == answer
    assert final.finish is not None and final.finish.reason is FinishReason.END_TURN
    assert final.tool_results == [ToolResult("call_w", "get_weather", "sunny in Paris")]


async def test_record_stream_without_a_session_records_the_reply(store: Store) -> None:
    agent, _ = weather_agent(1)
    message = await record_stream(Runner.run_streamed(agent, "Weather?"), store, "solo")
    assert message.role is Role.ASSISTANT
    assert message.text == "It is sunny in Paris 0."
    assert [c.id for c in message.tool_calls] == ["call_0"]
    assert message.finish is not None and message.finish.reason is FinishReason.END_TURN
    assert item_parts(message) == []
    session = MessageStoreSession("solo", store)
    assert await session.get_items() == []  # recorded for display; the SDK stored no items
    assert [m.id for m in await store_messages(session)] == [message.id]


async def test_record_stream_records_a_failed_run_and_reraises(store: Store) -> None:
    agent = Agent(name="broken", model=ScriptedModel([RuntimeError("model exploded")]))
    streamed = Runner.run_streamed(agent, "Hi", session=MessageStoreSession("s", store))
    with pytest.raises(RuntimeError, match="model exploded"):
        await record_stream(streamed, store, "s")
    messages = await store_messages(MessageStoreSession("s", store))
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT]
    finish = messages[1].finish
    assert finish is not None and finish.reason is FinishReason.ERROR
    assert finish.message == "model exploded"
    assert finish.details == "RuntimeError"


async def test_record_stream_records_max_turns_exceeded(store: Store) -> None:
    agent, _ = weather_agent(1)
    streamed = Runner.run_streamed(agent, "Hi", max_turns=1)
    with pytest.raises(MaxTurnsExceeded):
        await record_stream(streamed, store, "s")
    (message,) = await store_messages(MessageStoreSession("s", store))
    assert message.finish is not None and message.finish.reason is FinishReason.ERROR
    assert message.finish.details == "MaxTurnsExceeded"


async def test_cancelling_record_stream_cancels_the_run_and_records_it(store: Store) -> None:
    tool_started = asyncio.Event()
    never = asyncio.Event()

    @function_tool
    async def slow_tool() -> str:
        """Never returns."""
        tool_started.set()
        await never.wait()
        return "unreachable"

    model = ScriptedModel([[function_call("slow_tool", {}, call_id="call_s")]])
    agent = Agent(name="slow", model=model, tools=[slow_tool])
    events = store.messages.subscribe()
    streamed = Runner.run_streamed(agent, "Go", session=MessageStoreSession("s", store))
    recording = asyncio.create_task(record_stream(streamed, store, "s"))
    async with asyncio.timeout(WAIT):
        await tool_started.wait()
        # Cancel once the recorder has written the finished call (it may lag the run).
        async for event in events:
            if [(c.id, c.finished) for c in event.payload.tool_calls] == [("call_s", True)]:
                break
    events.close()
    recording.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await recording
    assert streamed.is_complete
    assert streamed.run_loop_task is not None and streamed.run_loop_task.done()
    messages = await store_messages(MessageStoreSession("s", store))
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT]
    finish = messages[1].finish
    assert finish is not None and finish.reason is FinishReason.CANCELED
    assert [c.id for c in messages[1].tool_calls] == ["call_s"]


async def test_record_stream_refuses_what_it_cannot_record(store: Store) -> None:
    agent, _ = weather_agent(2)
    with pytest.raises(TypeError, match=r"Runner\.run_streamed"):
        await record_stream(await Runner.run(agent, "Hi"), store, "s")  # type: ignore[arg-type]
    first = Runner.run_streamed(agent, "Hi")
    recording = asyncio.create_task(record_stream(first, store, "s"))
    await asyncio.sleep(0)  # let it register
    second = Runner.run_streamed(agent, "Hi")
    with pytest.raises(RuntimeError, match="already being recorded"):
        await record_stream(second, store, "s")
    second.cancel()
    async with asyncio.timeout(WAIT):
        await recording


# -- the session protocol ----------------------------------------------------------------------


async def test_get_items_returns_the_latest_n_in_chronological_order(store: Store) -> None:
    session = MessageStoreSession("limits", store)
    items = [user(f"m{i}") for i in range(6)]
    await session.add_items(items[:1])
    await session.add_items(items[1:3])
    await session.add_items(items[3:])
    assert await session.get_items() == items
    for n in range(1, 8):
        assert await session.get_items(limit=n) == items[-n:]
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=-1) == []
    limited = MessageStoreSession("limits", store, session_settings=SessionSettings(limit=2))
    assert await limited.get_items() == items[-2:]
    assert await limited.get_items(limit=4) == items[-4:]
    assert (
        await MessageStoreSession("limits", store, session_settings={"limit": 3}).get_items()
    ) == items[-3:]


async def test_a_new_session_is_empty_and_reads_create_nothing(store: Store) -> None:
    session = MessageStoreSession("fresh", store)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.clear_session()
    await session.add_items([])
    assert await session.store_session_id() is None
    assert await store.sessions.list() == []


async def test_pop_item_removes_the_newest_item_across_batches(store: Store) -> None:
    session = MessageStoreSession("pops", store)
    items = [user("a"), user("b"), user("c"), user("d")]
    await session.add_items(items[:3])
    await session.add_items(items[3:])
    # What each batch's message shows after each pop: what is left of it; gone once empty.
    shown = [["a\n\nb\n\nc"], ["a\n\nb"], ["a"], []]
    for n, texts in zip(range(4, 0, -1), shown, strict=True):
        assert await session.pop_item() == items[n - 1]
        assert await session.get_items() == items[: n - 1]
        assert [m.text for m in await store_messages(session)] == texts
    assert await session.pop_item() is None


async def test_an_add_items_batch_is_stored_whole_or_not_at_all(store: Store) -> None:
    session = MessageStoreSession("atomic", store)
    await session.add_items([user("kept")])
    too_big = user("x" * (17 * 1024 * 1024))  # over the store's limit for one part field
    with pytest.raises(InvalidMessage):
        await session.add_items([user("lost 1"), user("lost 2"), too_big])
    with pytest.raises(InvalidMessage, match=r"items\[1\]\['role'\]"):
        await session.add_items([user("lost 3"), cast(TResponseInputItem, {"content": "x"})])
    assert await session.get_items() == [user("kept")]
    assert len(await store_messages(session)) == 1


async def test_concurrent_first_writes_create_one_session(store: Store) -> None:
    sessions = [MessageStoreSession("busy", store) for _ in range(2)]
    submitted = [user(f"msg-{i}") for i in range(25)]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(
            *(sessions[i % 2].add_items([item]) for i, item in enumerate(submitted))
        )
    assert [s.title for s in await store.sessions.list()] == ["openai-agents:busy"]
    stored = await sessions[0].get_items()
    assert sorted(json.dumps(i) for i in stored) == sorted(json.dumps(i) for i in submitted)


async def test_concurrent_pops_return_each_item_once(store: Store) -> None:
    session = MessageStoreSession("pops", store)
    items = [user(f"m{i}") for i in range(10)]
    await session.add_items(items[:5])
    await session.add_items(items[5:])
    others = [MessageStoreSession("pops", store) for _ in range(3)]
    async with asyncio.timeout(WAIT):
        popped = await asyncio.gather(*(others[i % 3].pop_item() for i in range(12)))
    got = [p for p in popped if p is not None]
    assert sorted(json.dumps(i) for i in got) == sorted(json.dumps(i) for i in items)
    assert popped.count(None) == 2
    assert await session.get_items() == []


async def test_a_corrupt_item_is_isolated_and_kept(store: Store) -> None:
    session = MessageStoreSession("corrupt", store)
    items = [user("valid 0"), user("valid 1"), user("valid 2")]
    await session.add_items(items)
    store_session_id = await session.store_session_id()
    assert store_session_id is not None
    broken = Binary("message.json", ITEM_MIME, b"not valid json {{{")
    not_an_object = Binary("message.json", ITEM_MIME, b"[1, 2]")
    bad = await store.messages.create(
        store_session_id, role=Role.USER, parts=[broken, not_an_object]
    )

    assert await session.get_items() == items
    assert await session.get_items(limit=2) == items[1:]  # the limit counts valid items
    assert await session.pop_item() == items[2]
    assert await session.get_items() == items[:2]
    assert (await store.messages.get(bad.id)).parts == [broken, not_an_object]  # not deleted

    only_corrupt = MessageStoreSession("only-corrupt", store)
    await only_corrupt.add_items([user("x")])
    assert await only_corrupt.pop_item() == user("x")
    target = await only_corrupt.store_session_id()
    assert target is not None
    await store.messages.create(target, role=Role.USER, parts=[broken])
    assert await only_corrupt.pop_item() is None
    assert await only_corrupt.get_items() == []


ZOO: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is in this picture? ünïcödé \ud800 \x00"},
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
            {"type": "input_file", "filename": "a.txt", "file_data": "data:text/plain;base64,aGk="},
        ],
    },
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "Think."}],
        "content": [{"type": "reasoning_text", "text": "Deeper."}],
        "encrypted_content": "opaque==",
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "lookup",
        "namespace": "tools",
        "arguments": '{"q": "cats", "n": 1.5e-300}',
        "status": "completed",
    },
    {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": [
            {"type": "input_text", "text": "a cat"},
            {"type": "input_image", "image_url": "https://example.com/cat2.png"},
        ],
    },
    {"type": "custom_tool_call", "call_id": "call_2", "name": "grep", "input": "cat|dog"},
    {"type": "custom_tool_call_output", "call_id": "call_2", "output": "2 matches"},
    {
        "type": "computer_call",
        "id": "cu_1",
        "call_id": "call_3",
        "action": {"type": "click", "x": 10, "y": 20, "button": "left"},
        "pending_safety_checks": [],
        "status": "completed",
    },
    {
        "type": "computer_call_output",
        "call_id": "call_3",
        "output": {"type": "computer_screenshot", "image_url": "https://example.com/s.png"},
    },
    {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "cats"},
    },
    {
        "type": "mcp_call",
        "id": "mcp_1",
        "server_label": "files",
        "name": "read",
        "arguments": "{}",
        "output": None,
        "error": "no such file",
    },
    {"type": "item_reference", "id": "msg_old"},
    {"type": "a_type_from_the_future", "payload": {"nested": [True, None, 3, "x"]}},
    {
        "type": "message",
        "role": "assistant",
        "id": "msg_1",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "A cat.", "annotations": [], "logprobs": []},
            {"type": "refusal", "refusal": "No dogs."},
        ],
    },
]


async def test_every_kind_of_item_round_trips_and_is_shown(store: Store) -> None:
    session = MessageStoreSession("zoo", store)
    items = [cast(TResponseInputItem, item) for item in ZOO]
    await session.add_items(items[:3])
    await session.add_items(items[3:])
    assert await session.get_items() == ZOO
    assert await MessageStoreSession("zoo", store).get_items(limit=len(ZOO)) == ZOO

    inputs, outputs = await store_messages(session)
    assert inputs.role is Role.USER  # system and user input together
    assert inputs.text.startswith("You are terse.\n\nUse tools.\n\nWhat is in this picture?")
    images = [(p.url, p.detail) for p in inputs.parts if isinstance(p, ImageURL)]
    assert images == [("https://example.com/cat.png", "low")]  # a data: URL is not repeated
    assert inputs.finish is None
    assert outputs.role is Role.ASSISTANT
    reasoning = outputs.reasoning
    assert isinstance(reasoning, Reasoning) and reasoning.thinking == "Think.\n\nDeeper."
    calls = {c.id: c for c in outputs.tool_calls}
    assert list(calls) == ["call_1", "call_2", "call_3", "ws_1", "mcp_1"]
    assert calls["call_1"].input == '{"q": "cats", "n": 1.5e-300}'
    assert calls["ws_1"].provider_executed and not calls["call_1"].provider_executed
    results = {r.tool_call_id: r for r in outputs.tool_results}
    assert results["call_1"] == ToolResult("call_1", "lookup", "a cat\n[image]")
    assert results["call_2"].content == "2 matches"
    assert results["mcp_1"].is_error and results["mcp_1"].content == "no such file"
    assert set(results) == set(calls)  # every call reads as answered: recovery leaves it alone
    assert outputs.text == "A cat.\n\nNo dogs."
    assert outputs.finish is not None and outputs.finish.reason is FinishReason.TOOL_USE
    assert [p.path for p in item_parts(outputs)] == [f"{item['type']}.json" for item in ZOO[3:]]


@pytest.mark.parametrize(
    ("item", "complaint"),
    [
        ("hello", r"items\[1\] is a str, not a dict"),
        ({"role": "user", "content": ("a", "b")}, r"items\[1\]\['content'\] is a tuple"),
        ({"role": "user", "content": 7}, r"items\[1\]\['content'\] must be a str or a list"),
        (
            {"role": "user", "content": [{"type": "input_text", "text": b"x"}]},
            r"\['text'\] is a bytes",
        ),
        ({"role": "user", "content": "x", "score": float("nan")}, r"\['score'\] is nan"),
        ({"role": "user", "content": "x", "meta": {1: "a"}}, r"\['meta'\] has a int key 1"),
        ({"role": "robot", "content": "x"}, r"items\[1\]\['role'\] is 'robot'"),
        ({"content": "no role"}, r"items\[1\]\['role'\] is None"),
        ({"type": "", "role": "user"}, r"items\[1\]\['type'\] must be a non-empty str"),
        (
            {"type": "function_call", "name": "f", "arguments": "{}"},
            r"\['call_id'\] of a function_call must be a str; it is missing",
        ),
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
            r"\['arguments'\] of a function_call must be a str; it is a dict",
        ),
        (
            {"type": "function_call_output", "call_id": "c", "output": 3},
            r"\['output'\] of a function_call_output must be a str or a list",
        ),
    ],
)
async def test_an_invalid_item_is_refused_naming_the_field(
    store: Store, item: object, complaint: str
) -> None:
    session = MessageStoreSession("bad", store)
    with pytest.raises(InvalidMessage, match=complaint):
        await session.add_items([user("fine"), cast(TResponseInputItem, item)])
    assert await session.get_items() == []


async def test_it_is_an_sdk_session(store: Store) -> None:
    session: Session = MessageStoreSession("typed", store)  # checked by mypy
    assert isinstance(session, Session)  # and by the SDK's runtime protocol check
    assert session.session_id == "typed"
    assert session.session_settings == SessionSettings()


async def test_add_items_takes_a_list(store: Store) -> None:
    with pytest.raises(InvalidMessage, match="takes a list of items"):
        await MessageStoreSession("x", store).add_items(cast(Any, {"role": "user"}))
    with pytest.raises(TypeError, match="session_id must be a str"):
        MessageStoreSession(cast(Any, 5), store)
    with pytest.raises(ValueError, match="session_id must not be empty"):
        MessageStoreSession("", store)


async def test_clear_session_deletes_the_items_and_keeps_the_session(store: Store) -> None:
    session = MessageStoreSession("clear", store)
    await session.add_items([user("a"), user("b")])
    store_session_id = await session.store_session_id()
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.store_session_id() == store_session_id
    await session.add_items([user("c")])
    assert await session.get_items() == [user("c")]
    assert len(await store.sessions.list()) == 1


async def test_an_existing_store_session_id_is_used_as_is(store: Store) -> None:
    mine = await store.sessions.create("my chat")
    session = MessageStoreSession(mine.id, store)
    await session.add_items([user("hi")])
    assert await session.store_session_id() == mine.id
    assert [s.id for s in await store.sessions.list()] == [mine.id]
    assert [m.text for m in await store.messages.list(mine.id)] == ["hi"]


async def test_another_store_on_the_same_database_finds_the_session(
    store: Store, db_url: str
) -> None:
    await MessageStoreSession("shared", store).add_items([user("one")])
    async with open_store(db_url) as other:
        session = MessageStoreSession("shared", other)
        assert await session.get_items() == [user("one")]
        await session.add_items([user("two")])
    assert await MessageStoreSession("shared", store).get_items() == [user("one"), user("two")]
    assert len(await store.sessions.list()) == 1


async def test_messages_without_items_are_not_items(store: Store) -> None:
    session = MessageStoreSession("mixed", store)
    await session.add_items([user("from the sdk")])
    target = await session.store_session_id()
    assert target is not None
    await store.messages.create(target, role=Role.USER, parts=[Text("typed by hand")])
    assert await session.get_items() == [user("from the sdk")]
    assert await session.pop_item() == user("from the sdk")
    assert await session.pop_item() is None
    assert [m.text for m in await store.messages.list(target)] == ["typed by hand"]


async def test_a_cancelled_add_items_still_stores_its_batch(store: Store) -> None:
    session = MessageStoreSession("cancel", store)
    created = store.sessions.subscribe()
    adding = asyncio.create_task(session.add_items([user("a"), user("b")]))
    async with asyncio.timeout(WAIT):
        await anext(aiter(created))  # the session is being created: the write is under way
    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await adding
    created.close()
    assert await session.get_items() == [user("a"), user("b")]


async def test_session_settings_limit_bounds_the_history_a_run_sends(store: Store) -> None:
    agent, model = weather_agent(2)
    session = MessageStoreSession("short", store, session_settings=SessionSettings(limit=2))
    await Runner.run(agent, "First?", session=session)
    after_first = await session.get_items(limit=100)
    assert len(after_first) == 5
    await Runner.run(agent, "Second?", session=session)
    # The latest two items: the SDK then drops the tool output whose call is not among them.
    # (Newer SDKs leave the stored item's ``id`` out of what they send the model.)
    assert [without_id(i) for i in model.calls[2].input] == [
        without_id(after_first[-1]),
        user("Second?"),
    ]


def without_id(item: Any) -> Any:
    return {k: v for k, v in item.items() if k != "id"} if isinstance(item, dict) else item
