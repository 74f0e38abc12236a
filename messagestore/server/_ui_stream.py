"""Stored message states as the Vercel AI SDK's UI message stream, protocol version 1.

:class:`UIStreamEncoder` turns successive states of ONE message into UI message chunks: the
first state gives the whole message so far, each later state only what changed, the finish
closes the stream. Streams only grow: a state whose text or reasoning no longer extends what
was sent makes the encoder send ``error`` and end (``broken``). ``update(state, delta)``
encodes a following, append-only feed delta from its appends alone; anything else goes
through ``encode``; both give the same chunks. How each stored part maps to chunks:
docs/MODULES.md.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Callable
from typing import Any

from .. import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    Message,
    MessageDelta,
    Reasoning,
    Role,
    Text,
    ToolCall,
    ToolResult,
)

__all__ = ["FINISH_REASONS", "HEADERS", "UIStreamEncoder", "sse_chunk", "DONE"]

Chunk = dict[str, Any]

HEADERS = {
    "x-vercel-ai-ui-message-stream": "v1",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
"""Response headers of a UI message stream (the content type is ``text/event-stream``)."""

FINISH_REASONS: dict[FinishReason, str] = {
    FinishReason.END_TURN: "stop",
    FinishReason.MAX_TOKENS: "length",
    FinishReason.TOOL_USE: "tool-calls",
    FinishReason.CONTENT_FILTER: "content-filter",
    FinishReason.ERROR: "error",
    FinishReason.CANCELED: "other",
    FinishReason.INTERRUPTED: "other",
    FinishReason.PERMISSION_DENIED: "other",
    FinishReason.UNKNOWN: "other",
}
"""The protocol's ``finishReason`` for each stored reason (the stored one is in metadata)."""

_ABORTED = (FinishReason.CANCELED, FinishReason.INTERRUPTED)
_META = "messagestore"  # the providerMetadata namespace for stored fields with no protocol slot

DONE = b"data: [DONE]\n\n"


def sse_chunk(chunk: Chunk, dumps: Callable[[Any], bytes]) -> bytes:
    """One chunk as an SSE ``data:`` frame."""
    return b"data: " + dumps(chunk) + b"\n\n"


class _Call:
    __slots__ = ("available", "deltas", "sent")

    def __init__(self) -> None:
        self.sent = ""
        self.deltas = True
        self.available = False


class UIStreamEncoder:
    """Chunks for successive states of one message (see the module docstring)."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.started = False
        self.done = False
        """True once the finish (or an error that ends the stream) was produced."""
        self.broken = False
        """True when a state could not be expressed and the stream ended with an error."""
        self._text: str | None = None  # sent text, None before text-start
        self._text_open = False
        self._reasoning: str | None = None
        self._reasoning_open = False
        self._calls: dict[str, _Call] = {}
        self._results = 0  # ToolResult parts sent, in order
        self._files = 0  # ImageURL / Binary parts sent, in order
        self._revision: int | None = None  # of the state encoded last
        self._texts = 0  # Text parts of that state
        self._reasonings = 0  # Reasoning parts of that state

    def update(self, message: Message, delta: MessageDelta | None) -> list[Chunk]:
        """The chunks that bring the client from what was sent to ``message``, a later state;
        ``delta`` is the change that led to it (None when unknown).

        The same chunks as ``encode(message)``; taken from the delta's appends alone when it
        starts at the state encoded last and only appends to the text, the reasoning or the
        input of a tool call this encoder streams (see the module docstring).
        """
        if self.done:
            return []
        if delta is None or not self._follows(message, delta):
            return self.encode(message)
        out: list[Chunk] = []
        parts = message.parts
        for index in sorted(delta.append):
            appended = delta.append[index]
            part = parts[index]
            if not appended:
                continue
            if isinstance(part, Text):
                out.append({"type": "text-delta", "id": "text", "delta": appended})
                self._text = part.text
            elif isinstance(part, Reasoning):
                if self._reasoning_open:
                    out.append({"type": "reasoning-delta", "id": "reasoning", "delta": appended})
                    self._reasoning = part.thinking
            elif isinstance(part, ToolCall):
                call = self._calls[part.id]
                if not call.available and call.deltas:
                    out.append(
                        {
                            "type": "tool-input-delta",
                            "toolCallId": part.id,
                            "inputTextDelta": appended,
                        }
                    )
                    call.sent = part.input
        self._revision = message.revision
        return out

    def _follows(self, message: Message, delta: MessageDelta) -> bool:
        """Whether ``delta`` leads from the state encoded last to ``message`` by appends to
        parts this encoder streams (the one text, the one reasoning, a tool call it started)."""
        if (
            delta.parts
            or delta.base != self._revision
            or delta.revision != message.revision
            or delta.id != self.message_id
            or message.id != self.message_id
        ):
            return False
        parts = message.parts
        for index in delta.append:
            if not 0 <= index < len(parts):
                return False
            part = parts[index]
            if isinstance(part, Text):
                if self._texts != 1 or self._text is None:
                    return False
            elif isinstance(part, Reasoning):
                if self._reasonings != 1 or self._reasoning is None:
                    return False
            elif not (isinstance(part, ToolCall) and part.id in self._calls):
                return False
        return True

    def encode(self, message: Message) -> list[Chunk]:
        """The chunks that bring the client from what was sent to ``message``."""
        if self.done:
            return []
        if message.id != self.message_id:
            raise ValueError(f"encoder of {self.message_id!r} got message {message.id!r}")
        self._revision = message.revision
        self._texts = sum(isinstance(part, Text) for part in message.parts)
        self._reasonings = sum(isinstance(part, Reasoning) for part in message.parts)
        out: list[Chunk] = []
        if not self.started:
            self.started = True
            out.append(
                {
                    "type": "start",
                    "messageId": message.id,
                    "messageMetadata": {
                        "sessionId": message.session_id,
                        "role": str(message.role),
                        "model": message.model,
                        "provider": message.provider,
                        "createdAt": message.created_at.isoformat(),
                    },
                }
            )
            out.append({"type": "start-step"})
        results = 0
        files = 0
        finish: Finish | None = None
        for part in message.parts:
            match part:
                case Text():
                    self._encode_text(part, out)
                case Reasoning():
                    self._encode_reasoning(part, out)
                case ToolCall():
                    self._encode_call(part, out)
                case ToolResult():
                    results += 1
                    if results > self._results:
                        self._results = results
                        self._encode_result(part, out)
                case ImageURL() | Binary():
                    files += 1
                    if files > self._files:
                        self._files = files
                        out.append(_file_chunk(part))
                case Finish():
                    finish = part
            if self.broken:
                return out
        if finish is not None:
            self._encode_finish(finish, out)
        elif message.role is not Role.ASSISTANT:
            self._encode_complete(out)
        return out

    def deleted(self) -> list[Chunk]:
        """The chunks that end the stream of a message that was deleted."""
        if self.done:
            return []
        self.done = True
        return [{"type": "error", "errorText": f"message {self.message_id} was deleted"}]

    # -- parts -------------------------------------------------------------------------------

    def _encode_text(self, part: Text, out: list[Chunk]) -> None:
        if self._text is None:
            self._text = ""
            self._text_open = True
            out.append({"type": "text-start", "id": "text"})
        self._text = self._grow("text", self._text, part.text, "text-delta", out)

    def _encode_reasoning(self, part: Reasoning, out: list[Chunk]) -> None:
        if self._reasoning is None:
            self._reasoning = ""
            self._reasoning_open = True
            out.append({"type": "reasoning-start", "id": "reasoning"})
        if self._reasoning_open:
            self._reasoning = self._grow(
                "reasoning", self._reasoning, part.thinking, "reasoning-delta", out
            )
            if part.finished_at is not None and not self.broken:
                out.append(self._reasoning_end(part))

    def _reasoning_end(self, part: Reasoning | None) -> Chunk:
        self._reasoning_open = False
        chunk: Chunk = {"type": "reasoning-end", "id": "reasoning"}
        if part is not None and part.signature:
            chunk["providerMetadata"] = {_META: {"signature": part.signature}}
        return chunk

    def _grow(self, part_id: str, sent: str, now: str, kind: str, out: list[Chunk]) -> str:
        if now == sent:
            return sent
        if not now.startswith(sent):
            self.broken = True
            self.done = True
            out.append(
                {
                    "type": "error",
                    "errorText": f"the {part_id} of message {self.message_id} was rewritten, "
                    "not extended; reload the message",
                }
            )
            return sent
        out.append({"type": kind, "id": part_id, "delta": now[len(sent) :]})
        return now

    def _encode_call(self, call: ToolCall, out: list[Chunk]) -> None:
        state = self._calls.get(call.id)
        if state is None:
            state = self._calls[call.id] = _Call()
            start: Chunk = {
                "type": "tool-input-start",
                "toolCallId": call.id,
                "toolName": call.name,
            }
            if call.provider_executed:
                start["providerExecuted"] = True
            out.append(start)
        if state.available:
            return
        if state.deltas and call.input != state.sent:
            if call.input.startswith(state.sent):
                delta = call.input[len(state.sent) :]
                out.append(
                    {"type": "tool-input-delta", "toolCallId": call.id, "inputTextDelta": delta}
                )
                state.sent = call.input
            else:
                state.deltas = False
        if call.finished:
            state.available = True
            available: Chunk = {
                "type": "tool-input-available",
                "toolCallId": call.id,
                "toolName": call.name,
                "input": _tool_input(call.input),
            }
            if call.provider_executed:
                available["providerExecuted"] = True
            out.append(available)

    def _encode_result(self, result: ToolResult, out: list[Chunk]) -> None:
        if result.tool_call_id not in self._calls:
            # A tool message: its call lives in another message; announce it so the result
            # has a tool part to land on.
            self._calls[result.tool_call_id] = call = _Call()
            call.available = True
            out.append(
                {
                    "type": "tool-input-available",
                    "toolCallId": result.tool_call_id,
                    "toolName": result.name,
                    "input": None,
                }
            )
        chunk: Chunk
        if result.is_error:
            chunk = {
                "type": "tool-output-error",
                "toolCallId": result.tool_call_id,
                "errorText": result.content,
            }
        else:
            chunk = {
                "type": "tool-output-available",
                "toolCallId": result.tool_call_id,
                "output": result.content,
            }
        if result.metadata:
            chunk["providerMetadata"] = {_META: {"metadata": result.metadata}}
        out.append(chunk)

    def _close_parts(self, out: list[Chunk]) -> None:
        if self._text_open:
            self._text_open = False
            out.append({"type": "text-end", "id": "text"})
        if self._reasoning_open:
            out.append(self._reasoning_end(None))
        out.append({"type": "finish-step"})

    def _encode_complete(self, out: list[Chunk]) -> None:
        """A user, system or tool message: complete as stored (only replies stream)."""
        self._close_parts(out)
        out.append({"type": "finish"})
        self.done = True

    def _encode_finish(self, finish: Finish, out: list[Chunk]) -> None:
        self._close_parts(out)
        if finish.reason in _ABORTED:
            abort: Chunk = {"type": "abort", "reason": str(finish.reason)}
            if finish.message:
                abort["reason"] = f"{finish.reason}: {finish.message}"
            out.append(abort)
        elif finish.reason is FinishReason.ERROR:
            text = finish.message or finish.details or "the reply failed"
            out.append({"type": "error", "errorText": text})
        out.append(
            {
                "type": "finish",
                "finishReason": FINISH_REASONS.get(finish.reason, "other"),
                "messageMetadata": {
                    "finish": {
                        "reason": str(finish.reason),
                        "time": finish.time.isoformat(),
                        "message": finish.message,
                        "details": finish.details,
                    }
                },
            }
        )
        self.done = True


def _tool_input(text: str) -> Any:
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


def _file_chunk(part: ImageURL | Binary) -> Chunk:
    if isinstance(part, ImageURL):
        chunk: Chunk = {"type": "file", "url": part.url, "mediaType": _image_type(part.url)}
        if part.detail:
            chunk["providerMetadata"] = {_META: {"detail": part.detail}}
        return chunk
    mime = part.mime_type or "application/octet-stream"
    data = base64.b64encode(part.data).decode("ascii")
    chunk = {"type": "file", "url": f"data:{mime};base64,{data}", "mediaType": mime}
    if part.path:
        chunk["providerMetadata"] = {_META: {"filename": part.path}}
    return chunk


def _image_type(url: str) -> str:
    if url.startswith("data:"):
        head = url[5:].split(",", 1)[0].split(";", 1)[0]
        return head or "image/*"
    guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
    return guessed if guessed and guessed.startswith("image/") else "image/*"
