"""``messagestore watch [--session ID] [--since REV] [--json] [--whole]``: tail the change
feed, live, through a read-only store (no database created or migrated, no lease, no sweep).

One line per message event, flushed as it arrives: a message's first line whole, each later
change a ``delta`` line saying what changed (``--whole``: every line whole; ``--json``: one
object per line). ``--since REV`` replays what changed after ``REV``, then continues live:
restarting from the last revision printed misses nothing and repeats nothing. SIGINT exits
130, SIGTERM 0, a closed reader 0; a ``REV`` it cannot resume from is an error (1). The line
format: README, "Command line"; in full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import OrderedDict
from typing import TextIO

from pubsub import Event, EventType

from .. import (
    Binary,
    Finish,
    ImageURL,
    Message,
    MessageDelta,
    Part,
    Reasoning,
    Text,
    ToolCall,
    ToolResult,
)
from ._common import Target, stop_on_signals
from ._inspect import find_session, message_document, reading

__all__ = [
    "EXIT_INTERRUPTED",
    "PREVIEW_LENGTH",
    "REMEMBERED",
    "Lines",
    "format_delta",
    "format_event",
    "watch",
]

PREVIEW_LENGTH = 60
EXIT_INTERRUPTED = 130
REMEMBERED = 10_000
"""Unfinished messages whose last printed state the watch keeps (for delta lines)."""


async def watch(
    target: Target,
    out: TextIO,
    *,
    session: str | None,
    since: int | None,
    as_json: bool,
    whole: bool = False,
) -> int:
    """Print every message event of ``target`` (see the module docstring) until a stop signal;
    the exit status: 130 after SIGINT, 0 after SIGTERM. ``whole``: every event whole."""
    lines = Lines(as_json=as_json, deltas=not whole)
    with stop_on_signals() as received:
        try:
            await _follow(target, out, lines, session=session, since=since)
        except asyncio.CancelledError:
            if not received:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        return EXIT_INTERRUPTED if received and received[0] == signal.SIGINT else 0


async def _follow(
    target: Target, out: TextIO, lines: Lines, *, session: str | None, since: int | None
) -> None:
    """Print every message event of ``target`` (see the module docstring) until cancelled."""
    async with reading(target) as store:
        session_id = None if session is None else (await find_session(store, session)).id
        sub = store.messages.subscribe(since=since, session_id=session_id)
        try:
            async for event in sub:
                out.write(lines.line(event) + "\n")
                out.flush()
        finally:
            sub.close()


class Lines:
    """The output lines of one watch: whole, or, for a change of a message whose state it
    printed last, what changed (see the module docstring)."""

    def __init__(self, *, as_json: bool, deltas: bool, remembered: int = REMEMBERED) -> None:
        self.as_json = as_json
        self.deltas = deltas
        self._remembered = remembered
        # message id -> (revision, number of parts) of the state printed last
        self._printed: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def line(self, event: Event[Message]) -> str:
        """The line for ``event`` (without the newline)."""
        message = event.payload
        printed = self._printed.pop(message.id, None)
        delta = event.delta
        if (
            printed is not None
            and isinstance(delta, MessageDelta)
            and delta.base == printed[0]
            and delta.revision == message.revision
            and event.type is EventType.UPDATED
        ):
            text = format_delta(message, delta, printed[1], as_json=self.as_json)
        else:
            text = format_event(event, as_json=self.as_json)
        if self.deltas and event.type is not EventType.DELETED and not message.is_finished:
            self._printed[message.id] = (message.revision, len(message.parts))
            if len(self._printed) > self._remembered:
                self._printed.popitem(last=False)
        return text


def format_delta(
    message: Message, delta: MessageDelta, base_parts: int, *, as_json: bool = False
) -> str:
    """The line for ``delta``, the change that made ``message`` from a state of
    ``base_parts`` parts (without the newline)."""
    if as_json:
        document = {"revision": message.revision, "type": "delta", "delta": delta.to_json()}
        return json.dumps(document, ensure_ascii=False)
    fields = [str(message.revision), "delta", message.session_id, message.id, message.role.value]
    pieces = []
    for index in sorted(delta.append):
        part = message.parts[index]
        appended = _quote(delta.append[index])
        if isinstance(part, Reasoning):
            pieces.append(f"+thinking: {appended}")
        elif isinstance(part, ToolCall):
            pieces.append(f"+→ {part.name}: {appended}")
        else:
            pieces.append(f"+{appended}")
    for index in sorted(delta.parts):
        pieces.append(("~" if index < base_parts else "") + _describe(delta.parts[index]))
    for key, value in delta.set.items():
        if key not in ("updated_at", "finished"):
            pieces.append(f"~{key}={json.dumps(value, ensure_ascii=False)}")
    return " ".join(fields + pieces)


def _quote(text: str) -> str:
    if len(text) > PREVIEW_LENGTH:
        text = text[: PREVIEW_LENGTH - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _describe(part: Part) -> str:
    """One part as a delta line shows it."""
    match part:
        case Text():
            return _quote(part.text)
        case Reasoning():
            done = " ✓" if part.finished_at is not None else ""
            return f"thinking: {_quote(part.thinking)}{done}"
        case ToolCall():
            text = f": {_quote(part.input)}" if part.input else ""
            return f"→ {part.name}{text}" + (" ✓" if part.finished else "")
        case ToolResult():
            return f"← {part.name}" + (" (error)" if part.is_error else "")
        case Finish():
            return f"■ {part.reason.value}"
        case ImageURL():
            return f"image {part.url}"
        case Binary():
            return f"file {part.path or part.mime_type}"
    return type(part).__name__


def format_event(event: Event[Message], *, as_json: bool = False) -> str:
    """One output line for ``event`` (without the newline)."""
    message = event.payload
    if as_json:
        document = {
            "revision": message.revision,
            "type": event.type.value,
            "message": message_document(message),
        }
        return json.dumps(document, ensure_ascii=False)
    fields = [
        str(message.revision),
        event.type.value,
        message.session_id,
        message.id,
        message.role.value,
    ]
    preview = "(deleted)" if event.type is EventType.DELETED else _preview(message)
    return " ".join(fields) + (f" {preview}" if preview else "")


def _preview(message: Message) -> str:
    pieces = []
    text = re.sub(r"\s+", " ", message.text).strip()
    if not text and message.reasoning is not None:
        text = "thinking: " + re.sub(r"\s+", " ", message.reasoning.thinking).strip()
    if text:
        if len(text) > PREVIEW_LENGTH:
            text = text[: PREVIEW_LENGTH - 1] + "…"
        pieces.append(json.dumps(text, ensure_ascii=False))
    pieces += [f"→ {call.name}" for call in message.tool_calls]
    pieces += [f"← {result.name}" for result in message.tool_results]
    finish = message.finish
    if finish is not None:
        pieces.append(f"■ {finish.reason.value}")
    return " ".join(pieces)
