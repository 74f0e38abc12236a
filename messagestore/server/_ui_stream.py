"""Stored message states as the Vercel AI SDK's UI message stream, protocol version 1.

:class:`UIStreamEncoder` turns successive states of ONE message into UI message chunks: the
first state gives the whole message so far, each later state only what changed, the finish
closes the stream. Streams only grow: a state whose text or reasoning no longer extends what
was sent makes the encoder send ``error`` and end (``broken``). ``update(state, delta)``
encodes a following, append-only feed delta from its appends alone; anything else goes
through ``encode``; both give the same chunks. :class:`TurnStreamEncoder` makes everything
one turn writes one UI message, each stored message one step. How each stored part maps to chunks:
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

__all__ = [
    "DONE",
    "FINISH_REASONS",
    "HEADERS",
    "TurnStreamEncoder",
    "UIStreamEncoder",
    "sse_chunk",
]

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
    """Chunks for successive states of one message (see the module docstring).

    ``step``: encode the message as one step of a turn's stream (``TurnStreamEncoder``): no
    ``start``, and its end is ``finish-step`` alone (``finish`` records the stored finish for
    the turn's end); part ids are prefixed with the message id; ``calls`` is the turn's record
    of tool calls, shared by its steps.
    """

    def __init__(
        self, message_id: str, *, step: bool = False, calls: dict[str, _Call] | None = None
    ) -> None:
        self.message_id = message_id
        self.step = step
        self.started = False
        self.done = False
        """True once the finish (or an error that ends the stream) was produced."""
        self.broken = False
        """True when a state could not be expressed and the stream ended with an error."""
        self.finish: Finish | None = None
        """In step mode: the stored finish the step ended with (None before, or without)."""
        self._text_id = f"{message_id}-text" if step else "text"
        self._reasoning_id = f"{message_id}-reasoning" if step else "reasoning"
        self._text: str | None = None  # sent text, None before text-start
        self._text_open = False
        self._reasoning: str | None = None
        self._reasoning_open = False
        self._calls: dict[str, _Call] = {} if calls is None else calls
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
                out.append({"type": "text-delta", "id": self._text_id, "delta": appended})
                self._text = part.text
            elif isinstance(part, Reasoning):
                if self._reasoning_open:
                    out.append(
                        {"type": "reasoning-delta", "id": self._reasoning_id, "delta": appended}
                    )
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
        if not self.started and self.step:
            self.started = True
            out.append({"type": "start-step"})
        elif not self.started:
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
        if self.step:  # the step ends where it was; the turn goes on
            out: list[Chunk] = []
            if self.started:
                self._close_parts(out)
            return out
        return [{"type": "error", "errorText": f"message {self.message_id} was deleted"}]

    def cut(self) -> list[Chunk]:
        """In step mode, the chunks that end a step whose message never finished (its turn
        ended without finishing it): open parts end, then ``finish-step``."""
        return self.deleted()

    # -- parts -------------------------------------------------------------------------------

    def _encode_text(self, part: Text, out: list[Chunk]) -> None:
        if self._text is None:
            self._text = ""
            self._text_open = True
            out.append({"type": "text-start", "id": self._text_id})
        self._text = self._grow(self._text_id, self._text, part.text, "text-delta", out)

    def _encode_reasoning(self, part: Reasoning, out: list[Chunk]) -> None:
        if self._reasoning is None:
            self._reasoning = ""
            self._reasoning_open = True
            out.append({"type": "reasoning-start", "id": self._reasoning_id})
        if self._reasoning_open:
            self._reasoning = self._grow(
                self._reasoning_id, self._reasoning, part.thinking, "reasoning-delta", out
            )
            if part.finished_at is not None and not self.broken:
                out.append(self._reasoning_end(part))

    def _reasoning_end(self, part: Reasoning | None) -> Chunk:
        self._reasoning_open = False
        chunk: Chunk = {"type": "reasoning-end", "id": self._reasoning_id}
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
            out.append({"type": "text-end", "id": self._text_id})
        if self._reasoning_open:
            out.append(self._reasoning_end(None))
        out.append({"type": "finish-step"})

    def _encode_complete(self, out: list[Chunk]) -> None:
        """A user, system or tool message: complete as stored (only replies stream)."""
        self._close_parts(out)
        if not self.step:
            out.append({"type": "finish"})
        self.done = True

    def _encode_finish(self, finish: Finish, out: list[Chunk]) -> None:
        self._close_parts(out)
        if self.step:
            self.finish = finish
            self.done = True
            return
        _ending(finish, out)
        out.append(
            {
                "type": "finish",
                "finishReason": FINISH_REASONS.get(finish.reason, "other"),
                "messageMetadata": {"finish": _finish_json(finish)},
            }
        )
        self.done = True


def _ending(finish: Finish, out: list[Chunk]) -> None:
    """The ``abort`` or ``error`` chunk a stored finish calls for, if any."""
    if finish.reason in _ABORTED:
        abort: Chunk = {"type": "abort", "reason": str(finish.reason)}
        if finish.message:
            abort["reason"] = f"{finish.reason}: {finish.message}"
        out.append(abort)
    elif finish.reason is FinishReason.ERROR:
        text = finish.message or finish.details or "the reply failed"
        out.append({"type": "error", "errorText": text})


def _finish_json(finish: Finish) -> dict[str, str]:
    return {
        "reason": str(finish.reason),
        "time": finish.time.isoformat(),
        "message": finish.message,
        "details": finish.details,
    }


_TURN_ENDINGS: dict[str, tuple[str, str | None]] = {
    # turn state -> (finishReason, the abort reason or error text when no step says better)
    "completed": ("stop", None),
    "failed": ("error", "the turn failed"),
    "cancelled": ("other", "canceled"),
    "interrupted": ("other", "interrupted"),
}


class TurnStreamEncoder:
    """Chunks for one turn: ``start``, each stored message as a step, then the end (see the
    module docstring). The caller hands it the turn's messages in order: ``step(id)`` gives
    the step encoder of a message (created on first use), ``end(state)`` the closing chunks."""

    def __init__(self, turn_id: str, session_id: str) -> None:
        self.turn_id = turn_id
        self.session_id = session_id
        self.done = False
        self._calls: dict[str, _Call] = {}
        self._last: UIStreamEncoder | None = None

    def start(self) -> list[Chunk]:
        """The turn's first chunk: its UI message's id and metadata."""
        return [
            {
                "type": "start",
                "messageId": self.turn_id,
                "messageMetadata": {"sessionId": self.session_id, "turnId": self.turn_id},
            }
        ]

    def step(self, message_id: str) -> UIStreamEncoder:
        """A new step encoder for the turn's next message (after the last one ended)."""
        encoder = UIStreamEncoder(message_id, step=True, calls=self._calls)
        self._last = encoder
        return encoder

    def end(self, state: str) -> list[Chunk]:
        """The turn ended (``state``: how, as the dispatcher records it): ``abort`` or
        ``error`` as its last step's finish (or, without one, its state) calls for, then
        ``finish`` (``finishReason`` of that finish or state)."""
        if self.done:
            return []
        self.done = True
        out: list[Chunk] = []
        last = self._last.finish if self._last is not None else None
        chunk: Chunk = {"type": "finish"}
        metadata: dict[str, Any] = {"turnState": state}
        if last is not None:
            _ending(last, out)
            chunk["finishReason"] = FINISH_REASONS.get(last.reason, "other")
            metadata["finish"] = _finish_json(last)
        else:
            reason, why = _TURN_ENDINGS.get(state, ("other", state))
            if reason == "error":
                out.append({"type": "error", "errorText": why})
            elif why is not None:
                out.append({"type": "abort", "reason": why})
            chunk["finishReason"] = reason
        chunk["messageMetadata"] = metadata
        out.append(chunk)
        return out

    def gone(self, why: str) -> list[Chunk]:
        """The input never got a turn (dropped, discarded, stale) or is gone: ``abort`` with
        ``why``, then ``finish``."""
        if self.done:
            return []
        self.done = True
        return [{"type": "abort", "reason": why}, {"type": "finish", "finishReason": "other"}]


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
