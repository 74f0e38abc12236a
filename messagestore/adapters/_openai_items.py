"""OpenAI Agents SDK items <-> messagestore parts: check, store exactly, show readably.

Each item is stored twice over in one message: exactly, as a ``Binary`` part of JSON
(``application/vnd.openai-agents.item+json``) that ``get_items`` returns equal to what was
added; and readably, as typed parts (``Text``, ``Reasoning``, ``ToolCall``, ``ToolResult``,
``ImageURL``) for ``show``, exports and the web view. One ``add_items`` batch is one message,
stored whole or not at all. An item that is not valid for the protocol raises
``InvalidMessage`` naming the item and the field, and nothing of its batch is stored. The
mapping of every item type: docs/MODULES.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeGuard

from .. import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    InvalidMessage,
    Part,
    Reasoning,
    Role,
    Text,
    ToolCall,
    ToolResult,
)
from ._json_values import check_json_value

__all__ = [
    "ITEM_MIME",
    "CorruptItem",
    "batch_parts",
    "decode_item",
    "display_parts",
    "encode_item",
    "finish_for",
    "is_item_part",
    "item_role",
    "validate_items",
]

ITEM_MIME = "application/vnd.openai-agents.item+json"

_MESSAGE_ROLES = {
    "user": Role.USER,
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "assistant": Role.ASSISTANT,
}
_HOSTED_CALLS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "mcp_call",
        "tool_search_call",
    }
)
# Fields not repeated in a tool call's displayed input: identity, state, bulky results.
_NOT_INPUT = frozenset(
    {"type", "id", "call_id", "status", "result", "results", "outputs", "output", "error"}
)


class CorruptItem(ValueError):
    """A stored item part that does not decode to a JSON object."""


# -- checking ------------------------------------------------------------------------------


def validate_items(items: object) -> list[dict[str, Any]]:
    """The items as a list, or ``InvalidMessage`` naming the first bad item and field."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise InvalidMessage(
            f"add_items() takes a list of items (dicts), not {type(items).__name__}"
        )
    checked: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise InvalidMessage(
                f"{where} is a {type(item).__name__}, not a dict (a TResponseInputItem)"
            )
        check_json_value(item, where)
        _check_fields(item, where)
        checked.append(item)
    return checked


def _check_fields(item: dict[str, Any], where: str) -> None:
    kind = item.get("type")
    if "type" in item and (not isinstance(kind, str) or not kind):
        raise InvalidMessage(f"{where}['type'] must be a non-empty str, not {kind!r}")
    if kind is None or kind == "message":
        role = item.get("role")
        if role not in _MESSAGE_ROLES:
            raise InvalidMessage(
                f"{where}['role'] is {role!r}; a message's role is one of "
                f"{', '.join(sorted(_MESSAGE_ROLES))}"
                + ("" if "type" in item else " (an item without 'type' is a message)")
            )
        content = item.get("content")
        if not isinstance(content, str | list):
            raise InvalidMessage(
                f"{where}['content'] must be a str or a list of content parts, "
                f"not {type(content).__name__}"
            )
        return
    required: tuple[str, ...] = ()
    if kind == "function_call":
        required = ("call_id", "name", "arguments")
    elif kind == "custom_tool_call":
        required = ("call_id", "name", "input")
    elif kind in ("function_call_output", "custom_tool_call_output"):
        required = ("call_id",)
    for name in required:
        if not isinstance(item.get(name), str):
            got = "missing" if name not in item else f"a {type(item[name]).__name__}"
            raise InvalidMessage(f"{where}['{name}'] of a {kind} must be a str; it is {got}")
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        if not isinstance(output, str | list):
            raise InvalidMessage(
                f"{where}['output'] of a {kind} must be a str or a list of content parts, "
                f"not {type(output).__name__}"
            )


# -- the exact item ------------------------------------------------------------------------


def encode_item(item: Mapping[str, Any]) -> Binary:
    """The part that stores ``item`` exactly."""
    kind = item.get("type")
    name = kind if isinstance(kind, str) and kind else "message"
    data = json.dumps(item, separators=(",", ":"), allow_nan=False).encode()
    return Binary(f"{name}.json", ITEM_MIME, data)


def is_item_part(part: Part) -> TypeGuard[Binary]:
    """True for a part that stores one item exactly."""
    return isinstance(part, Binary) and part.mime_type == ITEM_MIME


def decode_item(part: Binary) -> dict[str, Any]:
    """The item stored in ``part``, or ``CorruptItem``."""
    try:
        item = json.loads(part.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptItem(f"not JSON: {exc}") from None
    if not isinstance(item, dict):
        raise CorruptItem(f"a JSON {type(item).__name__}, not an object")
    return item


# -- the readable view ---------------------------------------------------------------------


def item_role(item: Mapping[str, Any]) -> Role:
    """The role a message holding only ``item`` would have."""
    kind = item.get("type")
    if kind is None or kind == "message":
        return _MESSAGE_ROLES.get(str(item.get("role")), Role.ASSISTANT)
    if isinstance(kind, str) and kind.endswith("_output"):
        return Role.TOOL
    return Role.ASSISTANT


def batch_parts(items: list[dict[str, Any]]) -> tuple[Role, list[Part]]:
    """The role and parts of the message that stores one batch: view, exact items, finish."""
    roles = {item_role(item) for item in items}
    role = next(r for r in (Role.ASSISTANT, Role.USER, Role.TOOL, Role.SYSTEM) if r in roles)
    parts = display_parts(items)
    parts.extend(encode_item(item) for item in items)
    if role is Role.ASSISTANT:
        parts.append(finish_for(parts))
    return role, parts


def finish_for(parts: list[Part]) -> Finish:
    """``TOOL_USE`` if the parts call a client-side tool, else ``END_TURN``."""
    calls_tool = any(isinstance(p, ToolCall) and not p.provider_executed for p in parts)
    return Finish(FinishReason.TOOL_USE if calls_tool else FinishReason.END_TURN, datetime.now(UTC))


def display_parts(items: Iterable[Mapping[str, Any]]) -> list[Part]:
    """Typed parts showing ``items``: one ``Text``, one ``Reasoning``, tool calls and results."""
    view = _View()
    for item in items:
        view.add(item)
    return view.parts()


class _View:
    """Accumulates the typed parts of several items, keeping the one-per-kind rules."""

    def __init__(self) -> None:
        self._parts: list[Part | None] = []
        self._texts: list[str] = []
        self._thinking: list[str] = []
        self._text_at = self._reasoning_at = -1
        self._call_ids: set[str] = set()
        self._names: dict[str, str] = {}

    def parts(self) -> list[Part]:
        now = datetime.now(UTC)
        out: list[Part] = []
        for index, part in enumerate(self._parts):
            if index == self._text_at:
                out.append(Text("\n\n".join(self._texts)))
            elif index == self._reasoning_at:
                thinking = "\n\n".join(self._thinking)
                out.append(Reasoning(thinking, started_at=now, finished_at=now))
            elif part is not None:
                out.append(part)
        return out

    def add(self, item: Mapping[str, Any]) -> None:
        kind = item.get("type")
        if kind is None or kind == "message":
            self._message(item)
        elif kind == "reasoning":
            self._reasoning(item)
        elif kind == "function_call":
            self._call(item, str(item.get("name", "")), _text(item.get("arguments")))
        elif kind == "custom_tool_call":
            self._call(item, str(item.get("name", "")), _text(item.get("input")))
        elif isinstance(kind, str) and kind.endswith("_output"):
            self._output(item)
        elif isinstance(kind, str) and kind.endswith("_call"):
            self._other_call(item, kind)

    def _message(self, item: Mapping[str, Any]) -> None:
        content = item.get("content")
        if isinstance(content, str):
            self._text(content)
            return
        if not isinstance(content, list):
            return
        for piece in content:
            if not isinstance(piece, dict):
                continue
            kind = piece.get("type")
            if kind in ("input_text", "output_text", "text") and isinstance(piece.get("text"), str):
                self._text(piece["text"])
            elif kind == "refusal" and isinstance(piece.get("refusal"), str):
                self._text(piece["refusal"])
            elif kind == "input_image":
                url = piece.get("image_url")
                if isinstance(url, str) and url and not url.startswith("data:"):
                    detail = piece.get("detail")
                    self._parts.append(ImageURL(url, detail if isinstance(detail, str) else ""))

    def _text(self, text: str) -> None:
        if self._text_at < 0:
            self._text_at = len(self._parts)
            self._parts.append(None)
        self._texts.append(text)

    def _reasoning(self, item: Mapping[str, Any]) -> None:
        pieces = [
            piece["text"]
            for key in ("summary", "content")
            if isinstance(item.get(key), list)
            for piece in item[key]
            if isinstance(piece, dict) and isinstance(piece.get("text"), str)
        ]
        if self._reasoning_at < 0:
            self._reasoning_at = len(self._parts)
            self._parts.append(None)
        self._thinking.extend(pieces)

    def _call(
        self, item: Mapping[str, Any], name: str, arguments: str, *, hosted: bool = False
    ) -> str | None:
        call_id = item.get("call_id") or item.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in self._call_ids:
            return None
        self._call_ids.add(call_id)
        self._names[call_id] = name
        self._parts.append(ToolCall(call_id, name, arguments, True, hosted))
        return call_id

    def _other_call(self, item: Mapping[str, Any], kind: str) -> None:
        name = item.get("name")
        name = name if isinstance(name, str) and name else kind
        shown = {k: v for k, v in item.items() if k not in _NOT_INPUT}
        hosted = kind in _HOSTED_CALLS
        call_id = self._call(item, name, _text(shown), hosted=hosted)
        if call_id is None or not hosted:
            return
        # A hosted call carries its own outcome: show it, so the call reads as answered.
        error = item.get("error")
        if error:
            self._parts.append(ToolResult(call_id, name, _text(error), is_error=True))
        else:
            outcome = item.get("output") or item.get("status") or ""
            self._parts.append(ToolResult(call_id, name, _text(outcome)))

    def _output(self, item: Mapping[str, Any]) -> None:
        call_id = item.get("call_id") or item.get("id")
        if not isinstance(call_id, str) or not call_id:
            return
        status = item.get("status")
        self._parts.append(
            ToolResult(
                call_id,
                self._names.get(call_id, ""),
                _output_text(item.get("output")),
                is_error=status in ("failed", "incomplete"),
            )
        )


def _output_text(output: object) -> str:
    """A tool output's text: its text pieces; images and files as placeholders."""
    if not isinstance(output, list):
        return _text(output)
    shown: list[str] = []
    for piece in output:
        kind = piece.get("type") if isinstance(piece, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(piece.get("text"), str):
            shown.append(piece["text"])
        elif kind == "input_image":
            shown.append("[image]")
        elif kind == "input_file":
            shown.append("[file]")
        else:
            shown.append(_text(piece))
    return "\n".join(shown)


def _text(value: object) -> str:
    """A string as is; anything else as compact JSON (``""`` for None)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
