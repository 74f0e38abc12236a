"""``record_stream``: a streamed OpenAI Agents SDK run, written as it streams.

``await record_stream(Runner.run_streamed(agent, input, ...), store, session_id)`` writes the
run into ONE assistant message of the store session ``session_id`` names, through ``update()``:
streamed text, reasoning and tool-call arguments are intermediate changes; a tool call starting
or completing, reasoning ending and the finish are terminal (written before the next event is
read). The finish says how the run ended (``END_TURN``, ``TOOL_USE``, ``MAX_TOKENS``, ``ERROR``
re-raised, ``CANCELED``). It returns the message as stored. With a ``MessageStoreSession`` on
the run the turn is stored once (``_openai_recordings``). In full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator
from typing import Any, cast

from agents import RawResponsesStreamEvent, RunItemStreamEvent, RunResultStreaming, StreamEvent

from .. import FinishReason, Message, Reasoning, Store, Text, ToolCall, ToolResult
from ._loop_bridge import LoopBridge
from ._openai_items import display_parts, is_item_part
from ._openai_recordings import Recording
from ._store_sessions import check_key

__all__ = ["record_stream"]

logger = logging.getLogger("messagestore.adapters.openai_agents")

_TOOL_CALLS = ("function_call", "custom_tool_call")
_CALL_ARGUMENT_DELTAS = (
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
)
_TEXT_DELTAS = ("response.output_text.delta", "response.refusal.delta")
_REASONING_DELTAS = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")
_INCOMPLETE = {
    "max_output_tokens": FinishReason.MAX_TOKENS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


async def record_stream(result: RunResultStreaming, store: Store, session_id: str) -> Message:
    """Write the streamed run ``result`` into one assistant message of ``session_id``."""
    if not isinstance(result, RunResultStreaming):
        raise TypeError(
            "record_stream() takes the result of Runner.run_streamed(...), "
            f"not {type(result).__name__}"
        )
    key = check_key(session_id, "record_stream")
    bridge = LoopBridge("record_stream", store)
    recording = await bridge.run(Recording(store, key).register)
    try:
        recorder = _Recorder(store, recording, bridge)
        try:
            await recorder.consume(result)
        finally:
            await bridge.run(recording.settle)
        message = await bridge.run(recording.ensure_message)
        return await bridge.run(lambda: store.messages.get(message.id))
    finally:
        bridge.call_soon(recording.unregister)


class _Recorder:
    """Turns the run's events into mutations of the recorded message, each one ``update()``d.

    ``consume`` and ``_events`` run in the run's loop; everything else on the store's loop.
    """

    def __init__(self, store: Store, recording: Recording, bridge: LoopBridge) -> None:
        self._store = store
        self._recording = recording
        self._bridge = bridge
        self._call_of_item: dict[str, str] = {}  # output item id -> tool call id
        self._streamed: set[str] = set()  # output item ids whose content arrived as deltas
        self._text_key: tuple[str, int] | None = None
        self._reasoning_key: tuple[str, str, int] | None = None
        self._incomplete: FinishReason | None = None

    async def consume(self, result: RunResultStreaming) -> None:
        try:
            await self._events(result)
        except asyncio.CancelledError:
            await self._finish_after_failure(FinishReason.CANCELED, "the recording was cancelled")
            raise
        except Exception as exc:
            await self._finish_after_failure(
                FinishReason.ERROR, str(exc) or type(exc).__name__, exc
            )
            raise
        if result.interruptions:
            await self._bridge.run(
                lambda: self._finish(FinishReason.TOOL_USE, "waiting for tool approval")
            )
        else:
            await self._bridge.run(lambda: self._finish(self._incomplete or FinishReason.END_TURN))

    async def _events(self, result: RunResultStreaming) -> None:
        """Apply every event; if that stops early, cancel the run before closing its stream
        (closing it waits for the run to end)."""
        stream = cast(AsyncGenerator[StreamEvent, None], result.stream_events())
        async with contextlib.aclosing(stream) as events:
            try:
                async for event in events:
                    if isinstance(event, RawResponsesStreamEvent | RunItemStreamEvent):
                        await self._bridge.run(functools.partial(self._apply, event))
            except BaseException:
                if not result.is_complete:
                    result.cancel()
                raise

    async def _apply(self, event: RawResponsesStreamEvent | RunItemStreamEvent) -> None:
        if isinstance(event, RawResponsesStreamEvent):
            await self._raw(event.data)
        else:
            await self._run_item(event)

    # -- writing -----------------------------------------------------------------------------

    async def _message(self) -> Message:
        return await self._recording.ensure_message()

    async def _update(self, message: Message, *, flush: bool = False) -> None:
        await self._store.messages.update(message)
        if flush:
            await self._store.messages.flush(message.id)

    async def _finish(
        self, reason: FinishReason, text: str = "", exc: BaseException | None = None
    ) -> None:
        message = await self._message()
        # The exact items (attached as the session stored them) go after what the stream showed.
        shown = [p for p in message.parts if not is_item_part(p)]
        message.parts[:] = shown + [p for p in message.parts if is_item_part(p)]
        message.add_finish(reason, text, type(exc).__name__ if exc is not None else "")
        await self._update(message)

    async def _finish_after_failure(
        self, reason: FinishReason, text: str, exc: BaseException | None = None
    ) -> None:
        """Record how the run ended; if even that fails, log it: the caller gets the cause."""
        try:
            await self._bridge.run(lambda: self._finish(reason, text, exc))
        except Exception:
            logger.warning("could not record the end (%s) of a streamed run", reason, exc_info=True)

    # -- raw model events ----------------------------------------------------------------------

    async def _raw(self, data: Any) -> None:
        kind = getattr(data, "type", "")
        if kind == "response.created":
            model = getattr(data.response, "model", "")
            if not isinstance(model, str):
                return
            if not self._recording.started:
                self._recording.model = model
            message = await self._message()
            if not message.model and model:  # created by the session, before this event
                message.model = model
                await self._update(message)
        elif kind in _TEXT_DELTAS:
            await self._text_delta(data.item_id, data.content_index, data.delta)
        elif kind in _REASONING_DELTAS:
            index = getattr(data, "summary_index", None)
            where = "summary" if index is not None else "content"
            index = index if index is not None else data.content_index
            await self._reasoning_delta((data.item_id, where, index), data.delta)
        elif kind == "response.output_item.added":
            await self._item_added(data.item)
        elif kind in _CALL_ARGUMENT_DELTAS:
            await self._arguments_delta(data.item_id, data.delta)
        elif kind == "response.output_item.done":
            await self._item_done(data.item)
        elif kind == "response.incomplete":
            details = getattr(data.response, "incomplete_details", None)
            self._incomplete = _INCOMPLETE.get(str(getattr(details, "reason", "")))
        elif kind == "response.completed":
            self._incomplete = None

    async def _text_delta(self, item_id: str, index: int, delta: str) -> None:
        message = await self._message()
        self._streamed.add(item_id)
        if self._text_key != (item_id, index):
            if self._text_key is not None and message.text:
                message.append_text("\n\n")
            self._text_key = (item_id, index)
        message.append_text(delta)
        await self._update(message)

    async def _reasoning_delta(self, key: tuple[str, str, int], delta: str) -> None:
        message = await self._message()
        self._streamed.add(key[0])
        if self._reasoning_key != key:
            reasoning = message.reasoning
            if self._reasoning_key is not None and reasoning is not None and reasoning.thinking:
                message.append_reasoning("\n\n")
            self._reasoning_key = key
        message.append_reasoning(delta)
        await self._update(message)

    async def _item_added(self, item: Any) -> None:
        if getattr(item, "type", "") not in _TOOL_CALLS:
            return
        message = await self._message()
        self._call_of_item[item.id or item.call_id] = item.call_id
        initial = getattr(item, "arguments", None) or getattr(item, "input", None) or ""
        message.add_tool_call(ToolCall(item.call_id, item.name, initial))
        await self._update(message)

    async def _arguments_delta(self, item_id: str, delta: str) -> None:
        call_id = self._call_of_item.get(item_id)
        message = await self._message()
        for call in message.tool_calls:
            if call.id == call_id:
                message.add_tool_call(ToolCall(call.id, call.name, call.input + delta))
                await self._update(message)
                return

    async def _item_done(self, item: Any) -> None:
        kind = getattr(item, "type", "")
        if kind in _TOOL_CALLS:
            message = await self._message()
            final = getattr(item, "arguments", None)
            if not isinstance(final, str):
                final = str(getattr(item, "input", ""))
            message.add_tool_call(ToolCall(item.call_id, item.name, final, finished=True))
            await self._update(message)
        elif kind == "reasoning" and item.id in self._streamed:
            message = await self._message()
            message.finish_reasoning()
            await self._update(message)

    # -- run items: tool results, and whatever did not stream -----------------------------------

    async def _run_item(self, event: RunItemStreamEvent) -> None:
        raw = event.item.raw_item
        item_id = raw.get("id") if isinstance(raw, dict) else getattr(raw, "id", None)
        if event.name in ("message_output_created", "reasoning_item_created"):
            if item_id in self._streamed:
                return
        elif event.name not in (
            "tool_called",
            "tool_output",
            "handoff_requested",
            "handoff_occured",
        ):
            return
        parts = display_parts([dict(event.item.to_input_item())])
        if not parts:
            return
        message = await self._message()
        flush = False
        for part in parts:
            flush |= _merge(message, part)
        await self._update(message, flush=flush)


def _merge(message: Message, part: Any) -> bool:
    """Add one shown part of a finished item; True if it was a tool result (to be flushed)."""
    if isinstance(part, Text):
        if message.text:
            message.append_text("\n\n")
        message.append_text(part.text)
    elif isinstance(part, Reasoning):
        current = message.reasoning
        if current is not None and current.thinking:
            message.append_reasoning("\n\n")
        message.append_reasoning(part.thinking)
        message.finish_reasoning()
    elif isinstance(part, ToolCall):
        known = {call.id: call for call in message.tool_calls}
        if part.id not in known or not known[part.id].finished:
            message.add_tool_call(part)
    elif isinstance(part, ToolResult):
        if any(r.tool_call_id == part.tool_call_id for r in message.tool_results):
            return False
        name = next((c.name for c in message.tool_calls if c.id == part.tool_call_id), part.name)
        message.add_tool_result(
            ToolResult(part.tool_call_id, name, part.content, part.metadata, part.is_error)
        )
        return True
    return False
