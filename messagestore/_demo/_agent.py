"""The simulated agent of ``messagestore serve --demo`` and ``messagestore worker --demo``: a
``run_turn`` that needs no model.

Each turn shows every kind of part the web view renders, streamed at a set pace with
``update()``: an assistant message that reasons, calls a ``word_count`` tool (its JSON input
streamed) and finishes with ``tool_use``; a tool message with the result; then a second
assistant message whose text streams word by word and finishes with ``end_turn``. A cancelled
turn (the page's Stop button) finishes the message being streamed with ``canceled``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .. import FinishReason, Message, Role, Store, ToolCall, ToolResult

__all__ = ["DEFAULT_RATE", "simulated_agent"]

DEFAULT_RATE = 20.0
"""Words per second the simulated agent streams."""

MODEL = "simulated-1"
PROVIDER = "demo"

_FILLER = (
    "This reply comes from the simulated agent of messagestore serve --demo. Every word you "
    "see arrived as its own update() call; the store wrote them to the database a few at a "
    "time, once per debounce window, and the page received each written state over "
    "Server-Sent Events. Reload the page while I am still typing: it lists the messages as "
    "stored, then resumes the event stream from that revision, so nothing is lost and nothing "
    "appears twice. Press Stop to cancel me."
)


def simulated_agent(
    store: Store, *, rate: float = DEFAULT_RATE
) -> Callable[[Any], Awaitable[None]]:
    """A ``run_turn`` for ``Dispatcher`` that streams a scripted reply at ``rate`` words/s."""
    if not rate > 0:
        raise ValueError(f"rate must be positive, not {rate!r}")
    pause = 1.0 / rate

    async def run_turn(turn: Any) -> None:
        text: str = turn.text
        words = text.split()
        current: Message | None = None
        try:
            current = await store.messages.create(
                turn.session_id, role=Role.ASSISTANT, model=MODEL, provider=PROVIDER
            )
            thought = (
                f"The user sent {len(words)} word(s). I will count them with the word_count "
                "tool, then answer."
            )
            for word in thought.split():
                current.append_reasoning(word + " ")
                await store.messages.update(current)
                await asyncio.sleep(pause)
            current.finish_reasoning()
            await store.messages.update(current)

            call_id = "call_" + uuid.uuid4().hex[:12]
            call_input = json.dumps({"text": text[:200]}, ensure_ascii=False)
            step = max(1, len(call_input) // 6)
            for end in range(step, len(call_input) + step, step):
                current.add_tool_call(ToolCall(call_id, "word_count", call_input[:end]))
                await store.messages.update(current)
                await asyncio.sleep(pause)
            current.add_tool_call(ToolCall(call_id, "word_count", call_input, finished=True))
            current.add_finish(FinishReason.TOOL_USE)
            await store.messages.update(current)
            current = None

            result = json.dumps({"words": len(words), "characters": len(text)})
            await store.messages.create(
                turn.session_id,
                role=Role.TOOL,
                parts=[ToolResult(call_id, "word_count", result)],
            )

            current = await store.messages.create(
                turn.session_id, role=Role.ASSISTANT, model=MODEL, provider=PROVIDER
            )
            reply = f"You wrote {len(words)} word(s) and {len(text)} character(s). {_FILLER}"
            for word in reply.split(" "):
                current.append_text(word + " ")
                await store.messages.update(current)
                await asyncio.sleep(pause)
            current.add_finish(FinishReason.END_TURN)
            await store.messages.update(current)
            current = None
        except asyncio.CancelledError:
            if current is not None and not current.is_finished:
                current.add_finish(FinishReason.CANCELED, "stopped by the user")
                await asyncio.shield(store.messages.update(current))
            raise

    return run_turn
