"""``messagestore watch [--session ID] [--since REV] [--json] [--whole]``: tail the change feed,
live.

Contracts:

* It only reads, like the inspection commands, through a read-only store: it never creates a
  database (a missing SQLite file is an error naming the path), never migrates one (the schema
  must be the newest this messagestore knows), takes no writer lease and runs no recovery
  sweep. It subscribes to the change feed as any store's subscriber does, so it sees what
  every process commits to the database (PostgreSQL: ``LISTEN``; SQLite: a poll of the
  revision counter while it runs).
* One line per message event, written and flushed as it arrives::

      REVISION TYPE SESSION MESSAGE ROLE PREVIEW

  A message's first line is whole: ``TYPE`` is ``created`` or ``updated`` and ``PREVIEW`` the
  text, shortened, then tool calls (``→ name``), tool results (``← name``) and the finish
  (``■ reason``). A later change of it (the feed's delta from the state printed last) is a
  ``delta`` line whose ``PREVIEW`` says what changed, in part order: text appended to the
  text (``+"more"``), the reasoning (``+thinking: "more"``) or a tool call's input
  (``+→ name: "more"``); each part added, as the whole preview shows it (``"text"``,
  ``thinking: "..."``, ``→ name: "input"``, ``← name``, ``■ reason``, ``image URL``,
  ``file PATH``), and each part replaced the same way after a ``~`` (``~thinking: "..." ✓``:
  reasoning ended; ``~→ name: "input" ✓``: the call's input is complete; ``✓`` marks
  either); then changed fields other than ``updated_at`` (``~model="..."``). Text is quoted
  as JSON, shortened to ``PREVIEW_LENGTH`` characters. A change a delta cannot express (parts
  removed), a message the watch forgot (it remembers the last ``REMEMBERED`` unfinished ones)
  and replayed states are whole lines. ``--whole`` prints every event whole.

  ``--json`` prints one JSON object per line instead: ``{"revision": ..., "type": ...,
  "message": {...}}`` for a whole event, the message in the format of ``export --format
  json``; ``{"revision": ..., "type": "delta", "delta": {...}}`` for a delta, the
  ``MessageDelta`` JSON (apply it to the message at ``delta.base``, the ``revision`` of an
  earlier line). A ``deleted`` event replayed from the database carries only the message's
  id, session and role (its content is gone): its parts are empty.
* ``--since REV`` first replays the newest state of every message that changed after revision
  ``REV`` (a line's first field), then continues live: restarting with the last revision seen
  misses nothing and repeats nothing. Without it only what commits from now on is shown.
  ``--session ID`` (an id, or a unique prefix of an existing session's) shows one session.
* It runs until stopped: SIGINT (Ctrl-C) exits with 130, SIGTERM with 0, both after closing
  the subscription and the database connection. Its handlers are installed explicitly, so a
  signal that the process inherited as ignored (``nohup``, a background job of a
  non-interactive shell, CI) still stops it. A reader that goes away (``| head``) ends it
  quietly with 0. A ``REV`` it cannot resume from (``RevisionUnavailable``) is an error
  (exit 1) that says so: older than the retained tombstones (``RevisionCompacted``, also when
  the watch itself fell that far behind), or above the database's newest revision
  (``RevisionFromFuture``: from another database, or from before this one was reset). Start
  again without ``--since``, or from a revision the database gave (a line's first field).
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
