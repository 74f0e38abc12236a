"""The simulated workload shared by the demo and the benchmark (no speed is asserted)."""

from __future__ import annotations

import itertools
import json

import pytest

from messagestore import Role, open_store
from messagestore._demo import WorkloadConfig, run_workload


async def test_streams_complete_conversations(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store:
        result = await run_workload(store, WorkloadConfig(streams=3, duration=0.5, rate=200))
        await store.messages.flush_all()
        assert result.stats.deltas > 0
        assert result.stats.messages_finished >= 3
        for message_id in result.stats.finished_ids:
            assert (await store.messages.get(message_id)).is_finished
        for session_id in result.session_ids:
            messages = await store.messages.list(session_id)
            assert all(m.model == "" for m in messages if m.role is Role.USER)
            assert all(m.is_finished for m in messages if m.role is Role.ASSISTANT)


async def test_a_failing_step_raises_its_own_error(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store:

        async def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("database said no")

        store.messages.create = refuse  # type: ignore[method-assign, assignment]
        with pytest.raises(RuntimeError, match="database said no"):
            await run_workload(store, WorkloadConfig(streams=2, duration=0.5))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="streams"):
        WorkloadConfig(streams=0)
    with pytest.raises(ValueError, match="rate"):
        WorkloadConfig(rate=0)


async def test_tool_call_input_streams_into_a_json_object(sqlite_url: str) -> None:
    """Every state a subscriber sees of a tool call's input extends the previous one, and the
    finished input parses as a JSON object (what a UI or the AI SDK's stream parses)."""
    async with open_store(sqlite_url) as store:
        inputs: dict[str, list[str]] = {}
        sub = store.messages.subscribe(buffer_size=100_000)
        config = WorkloadConfig(streams=3, duration=0.5, rate=200, tool_call_probability=1)
        await run_workload(store, config)
        await store.messages.flush_all()
        while sub.pending:
            for call in sub.receive_nowait().payload.tool_calls:
                seen = inputs.setdefault(call.id, [])
                if not seen or seen[-1] != call.input:
                    seen.append(call.input)
        sub.close()
        finished = [
            call
            for session in await store.sessions.list()
            for message in await store.messages.list(session.id)
            for call in message.tool_calls
        ]
    assert finished and all(call.finished for call in finished)
    for call in finished:
        arguments = json.loads(call.input)
        assert isinstance(arguments, dict) and arguments, call.input
        assert all(isinstance(value, str) for value in arguments.values())
        states = inputs[call.id]
        assert states[-1] == call.input
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(states))
