"""``messagestore sessions | show SESSION | export SESSION``: look at what is stored.

Inspection reads through a read-only store: it never creates or migrates a database, takes no
lease and runs no sweep, so unfinished messages are shown as stored. ``SESSION`` is an id or an
unambiguous prefix. ``show`` renders every part readably; ``export --format json`` writes every
part as ``{"type": TAG, "data": {...}}`` (bytes in base64, times ISO 8601 with offset);
``--format markdown`` is for reading.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text as RichText

from .. import (
    Binary,
    Finish,
    ImageURL,
    Message,
    Part,
    Reasoning,
    Role,
    Session,
    SessionNotFound,
    Store,
    Text,
    ToolCall,
    ToolResult,
)
from ..wire import message_json
from ._common import CliError, Target, open_cli_store

__all__ = [
    "EXPORT_FORMAT",
    "export_json",
    "export_markdown",
    "export_session",
    "find_session",
    "list_sessions",
    "message_document",
    "reading",
    "show_session",
]

EXPORT_FORMAT = "messagestore-export"
EXPORT_VERSION = 1


async def list_sessions(target: Target, out: TextIO, *, quiet: bool = False) -> None:
    """Print every session, newest first: a table, or only ids with ``quiet``."""
    async with reading(target) as store:
        sessions = await store.sessions.list()
    if quiet:
        for session in sessions:
            print(session.id, file=out)
        return
    console = _console(out, pipe_width=_TABLE_PIPE_WIDTH)
    if not sessions:
        console.print(RichText(f"no sessions in {target.where}"))
        return
    # Data goes in as Text, never as markup: a title like "[urgent]" must print as is.
    title = RichText(f"{len(sessions)} session(s) in {target.where}")
    table = Table(title=title, title_justify="left")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("title", overflow="fold")
    table.add_column("messages", justify="right", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    for session in sessions:
        table.add_row(
            session.id,
            RichText(session.title),
            str(session.message_count),
            _time(session.created_at),
        )
    console.print(table)


async def show_session(target: Target, session_ref: str, out: TextIO) -> None:
    """Render the session and every part of every message to ``out``."""
    session, messages = await _load(target, session_ref)
    console = _console(out)
    console.print(RichText(session.title or "(untitled)", style="bold"))
    console.print(
        RichText(
            f"session {session.id} · {len(messages)} message(s) · "
            f"created {_time(session.created_at)} UTC",
            style="dim",
        )
    )
    for message in messages:
        console.print(_render_message(message))


async def export_session(target: Target, session_ref: str, fmt: str, out: TextIO) -> None:
    """Write the session as ``json`` or ``markdown`` to ``out``."""
    session, messages = await _load(target, session_ref)
    if fmt == "json":
        out.write(export_json(session, messages))
    else:
        out.write(export_markdown(session, messages))


# -- loading ------------------------------------------------------------------------------


@asynccontextmanager
async def reading(target: Target) -> AsyncIterator[Store]:
    """A read-only store on ``target`` (see the module docstring), closed on exit."""
    store = await open_cli_store(target, read_only=True)
    try:
        yield store
    finally:
        await store.close()


async def _load(target: Target, session_ref: str) -> tuple[Session, list[Message]]:
    async with reading(target) as store:
        session = await find_session(store, session_ref)
        return session, await store.messages.list(session.id)


async def find_session(store: Store, ref: str) -> Session:
    """The session with id ``ref``, else the only one whose id starts with ``ref``."""
    try:
        return await store.sessions.get(ref)
    except SessionNotFound:
        pass
    matches = [s for s in await store.sessions.list() if ref and s.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CliError(f"session id prefix {ref!r} is ambiguous: {len(matches)} sessions match")
    raise CliError(f"session not found: {ref!r} (list them with `messagestore sessions`)")


# -- show: rich rendering -----------------------------------------------------------------


def _console(out: TextIO, *, pipe_width: int = 80) -> Console:
    """Rich output to ``out``: styled on a terminal; plain, ``pipe_width`` wide (rules and
    tables) and with text never wrapped when piped."""
    console = Console(file=out, highlight=False)
    if not console.is_terminal:
        console = Console(file=out, highlight=False, soft_wrap=True, width=pipe_width)
    return console


_TABLE_PIPE_WIDTH = 200  # a piped table keeps its natural width (ids are 36 characters)


def _render_message(message: Message) -> RenderableType:
    header = f"{message.role.value}"
    if message.model:
        header += f" · {message.model}"
    header += f" · {_time(message.created_at)}"
    lines: list[RenderableType] = [Rule(RichText(header, style="bold"), align="left")]
    lines.extend(_render_part(part) for part in message.parts)
    if message.role is Role.ASSISTANT and not message.is_finished:
        lines.append(RichText("… no finish: still streaming, or interrupted", style="yellow"))
    if not message.parts:
        lines.append(RichText("(no parts)", style="dim"))
    return Group(*lines)


def _render_part(part: Part) -> RenderableType:
    match part:
        case Text(text):
            return RichText(text)
        case Reasoning(thinking, _signature, started, finished):
            took = ""
            if started is not None and finished is not None:
                took = f" ({(finished - started).total_seconds():.1f} s)"
            state = "" if finished is not None else " (unfinished)"
            return RichText(f"thinking{took}{state}: {thinking}", style="dim italic")
        case ToolCall(call_id, name, input_, finished, provider_executed):
            flags = "finished" if finished else "input streaming"
            if provider_executed:
                flags += ", run by the provider"
            return RichText(f"→ tool call {name}({input_}) [{call_id}, {flags}]", style="cyan")
        case ToolResult(call_id, name, content, metadata, is_error):
            label = "error from" if is_error else "result of"
            result = RichText(
                f"← {label} {name} [{call_id}]: {content}", style="red" if is_error else "green"
            )
            if metadata:
                result.append(f"\n  metadata: {metadata}", style="dim")
            return result
        case Finish(reason, time, text, details):
            line = f"■ finished: {reason.value} at {_time(time)}"
            if text:
                line += f" — {text}"
            if details:
                line += f" ({details})"
            return RichText(line, style="bold")
        case ImageURL(url, detail):
            return RichText(f"image: {url}" + (f" (detail: {detail})" if detail else ""))
        case Binary(path, mime_type, data):
            return RichText(f"binary: {path or '(no name)'} ({mime_type}, {len(data):,} bytes)")
    raise AssertionError(f"unknown part {part!r}")  # pragma: no cover


# -- export -------------------------------------------------------------------------------


def export_json(session: Session, messages: list[Message]) -> str:
    """The JSON document for the session (see the module docstring), ending in a newline."""
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "session": {
            "id": session.id,
            "title": session.title,
            "parent_session_id": session.parent_session_id,
            "message_count": session.message_count,
            "prompt_tokens": session.prompt_tokens,
            "completion_tokens": session.completion_tokens,
            "cost": session.cost,
            "summary_message_id": session.summary_message_id,
            "created_at": session.created_at.isoformat(),
            "updated_at": session.updated_at.isoformat(),
        },
        "messages": [message_document(m) for m in messages],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def message_document(m: Message) -> dict[str, Any]:
    """One message as the JSON export writes it (also each line of ``watch --json``): the
    object of ``messagestore.wire.message_json`` without the ``revision``."""
    document = message_json(m)
    del document["revision"]
    return document


def export_markdown(session: Session, messages: list[Message]) -> str:
    """A readable Markdown transcript of the session, ending in a newline."""
    out = [
        f"# {session.title or '(untitled)'}",
        "",
        f"- Session: `{session.id}`",
        f"- Created: {_time(session.created_at)} UTC",
        f"- Messages: {len(messages)}",
    ]
    for message in messages:
        heading = message.role.value.capitalize()
        if message.model:
            heading += f" ({message.model})"
        out += ["", f"## {heading} · {_time(message.created_at)} UTC", ""]
        for part in message.parts:
            out += [*_markdown_part(part), ""]
        if message.role is Role.ASSISTANT and not message.is_finished:
            out += ["*No finish: still streaming, or interrupted.*", ""]
        while out and out[-1] == "":
            out.pop()
    return "\n".join(out) + "\n"


def _markdown_part(part: Part) -> list[str]:
    match part:
        case Text(text):
            return [text.strip() or "*(empty text)*"]
        case Reasoning(thinking, _signature, _started, finished):
            state = "" if finished is not None else " (unfinished)"
            summary = f"<details><summary>Reasoning{state}</summary>"
            return [summary, "", thinking.strip(), "", "</details>"]
        case ToolCall(call_id, name, input_, finished, _provider):
            state = "finished" if finished else "input still streaming"
            return [f"**Tool call** `{name}` (`{call_id}`, {state})", "", *_fenced(input_)]
        case ToolResult(call_id, name, content, _metadata, is_error):
            label = "Tool error" if is_error else "Tool result"
            return [f"**{label}** `{name}` (`{call_id}`)", "", *_fenced(content)]
        case Finish(reason, time, text, details):
            extra = "".join(f" — {s}" for s in (text, details) if s)
            return [f"*Finished: {reason.value} at {_time(time)} UTC{extra}*"]
        case ImageURL(url, detail):
            return [f"![image{': ' + detail if detail else ''}]({url})"]
        case Binary(path, mime_type, data):
            return [f"*Attachment: `{path or '(no name)'}` ({mime_type}, {len(data):,} bytes)*"]
    raise AssertionError(f"unknown part {part!r}")  # pragma: no cover


def _fenced(content: str) -> list[str]:
    """``content`` in a code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, content, fence]


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")
