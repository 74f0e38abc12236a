"""A ``run_turn`` for ``messagestore worker --agent tests.support.held_agent:run_turn`` that
holds its answer open halfway until the test lets it go, so that a test can kill a server in
mid-reply and resume on another without racing the agent.

Each turn writes: an assistant message that reasons and calls ``word_count`` (finished with
``tool_use``), a tool message with the result, and an answer whose first half streams at once.
The second half waits until the session's title is ``RELEASE`` (``store.sessions.save`` from the
test: the change reaches this process through the change feed), then streams and finishes
``end_turn``. A session already titled ``RELEASE`` does not wait.
"""

from __future__ import annotations

import asyncio
import json

from messagestore import FinishReason, Role, ToolCall, ToolResult, open_store
from messagestore.dispatch import Turn

RELEASE = "RELEASE"
WAIT = 120.0
FIRST = "The first half of the answer streams at once,"
SECOND = "and the second half after the test lets it go."


async def run_turn(turn: Turn) -> None:
    store = turn.store
    thinking = await turn.reply(model="held-1", provider="test")
    thinking.append_reasoning("Count the words first.")
    thinking.finish_reasoning()
    call_input = json.dumps({"text": turn.text})
    thinking.add_tool_call(ToolCall("call_held", "word_count", call_input, finished=True))
    thinking.add_finish(FinishReason.TOOL_USE)
    await store.messages.update(thinking)
    await store.messages.create(
        turn.session_id,
        role=Role.TOOL,
        parts=[
            ToolResult("call_held", "word_count", json.dumps({"words": len(turn.text.split())}))
        ],
    )
    answer = await turn.reply(model="held-1", provider="test")
    for word in FIRST.split():
        answer.append_text(word + " ")
        await store.messages.update(answer)
    await store.messages.flush(answer.id)
    await _released(turn)
    for word in SECOND.split():
        answer.append_text(word + " ")
        await store.messages.update(answer)
        await asyncio.sleep(0.01)
    answer.add_finish(FinishReason.END_TURN)
    await store.messages.update(answer)


async def _released(turn: Turn) -> None:
    """Return once the session's title is ``RELEASE`` (at most ``WAIT`` seconds)."""
    sessions = turn.store.sessions.subscribe()
    try:
        if (await turn.store.sessions.get(turn.session_id)).title == RELEASE:
            return
        async with asyncio.timeout(WAIT):
            async for event in sessions:
                if event.payload.id == turn.session_id and event.payload.title == RELEASE:
                    return
    finally:
        sessions.close()


async def release(db_url: str, session_id: str) -> None:
    """Let the agent finish the session's answer (from the test's process)."""
    async with open_store(db_url) as store:
        session = await store.sessions.get(session_id)
        session.title = RELEASE
        await store.sessions.save(session)
