"""Parts to JSON text and back.

A message's parts are stored as one JSON array; each element is ``{"type": TAG, "data": {...}}``.
Datetimes are ISO 8601 strings with offset (exact to the microsecond), ``bytes`` are base64. The
format is stable: a tag, once written, is readable by every later version.

Decoding is strict. Broken JSON, an unknown tag or a missing or mistyped field raises
``CorruptRow`` naming the message id, so one bad row never turns into half a message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import json.encoder
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ._errors import CorruptRow
from ._model import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    Part,
    Reasoning,
    Text,
    ToolCall,
    ToolResult,
)

__all__ = ["decode_parts", "encode_parts"]

_TAGS: dict[type, str] = {
    Text: "text",
    Reasoning: "reasoning",
    ImageURL: "image_url",
    Binary: "binary",
    ToolCall: "tool_call",
    ToolResult: "tool_result",
    Finish: "finish",
}


def _time_out(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _encode_part(part: Part) -> dict[str, Any]:
    match part:
        case Text(text):
            data: dict[str, Any] = {"text": text}
        case Reasoning(thinking, signature, started_at, finished_at):
            data = {
                "thinking": thinking,
                "signature": signature,
                "started_at": _time_out(started_at),
                "finished_at": _time_out(finished_at),
            }
        case ImageURL(url, detail):
            data = {"url": url, "detail": detail}
        case Binary(path, mime_type, raw):
            data = {"path": path, "mime_type": mime_type, "data": base64.b64encode(raw).decode()}
        case ToolCall(call_id, name, input_, finished, provider_executed):
            data = {
                "id": call_id,
                "name": name,
                "input": input_,
                "finished": finished,
                "provider_executed": provider_executed,
            }
        case ToolResult(tool_call_id, name, content, metadata, is_error):
            data = {
                "tool_call_id": tool_call_id,
                "name": name,
                "content": content,
                "metadata": metadata,
                "is_error": is_error,
            }
        case Finish(reason, time, message, details):
            data = {
                "reason": str(reason),
                "time": time.isoformat(),
                "message": message,
                "details": details,
            }
    return {"type": _TAGS[type(part)], "data": data}


def encode_parts(parts: Sequence[Part]) -> str:
    """The JSON text for ``parts``.

    Pure ASCII: non-ASCII characters are escaped, so even a lone surrogate that a caller streamed
    cannot make the database driver's UTF-8 encoding fail inside a background write.

    Built from one fragment per part (the same text ``json.dumps`` would give). This runs for
    every row of every batch, so the streaming ``Text`` part is escaped directly by the C
    encoder, and the fragments of small parts that do not change between writes (finished
    reasoning, tool calls, a finish) are cached: parts are frozen, so equal parts encode alike.
    """
    return "[" + ",".join([_fragment(part) for part in parts]) + "]"


_ENCODER = json.JSONEncoder(separators=(",", ":"))
_escape: Callable[[str], str] = json.encoder.encode_basestring_ascii
_CACHED_KINDS = (Reasoning, ToolCall, Finish, ImageURL)


def _fragment(part: Part) -> str:
    kind = type(part)
    if kind is Text:
        return '{"type":"text","data":{"text":' + _escape(part.text) + "}}"  # type: ignore[union-attr]
    if kind in _CACHED_KINDS:
        return _cached_fragment(part, _offsets(part))
    return _ENCODER.encode(_encode_part(part))


@functools.lru_cache(maxsize=4096)
def _cached_fragment(part: Part, offsets: object) -> str:
    del offsets  # part of the cache key only
    return _ENCODER.encode(_encode_part(part))


def _offsets(part: Part) -> object:
    """What part equality leaves out but the text shows: the UTC offsets of its times (equal
    instants compare equal whatever their offsets, so ``part`` alone is not a cache key)."""
    if isinstance(part, Reasoning):
        started, finished = part.started_at, part.finished_at
        return (
            None if started is None else started.utcoffset(),
            None if finished is None else finished.utcoffset(),
        )
    if isinstance(part, Finish):
        return part.time.utcoffset()
    return None


class _Fields:
    """Typed access to one part's ``data`` object; a bad field raises ``ValueError``."""

    __slots__ = ("_data",)

    def __init__(self, data: object) -> None:
        if not isinstance(data, dict):
            raise ValueError("part data is not an object")
        self._data: dict[str, object] = data

    def _get(self, name: str, default: object) -> object:
        value = self._data.get(name, default)
        if value is _REQUIRED:
            raise ValueError(f"field {name!r} is missing")
        return value

    def text(self, name: str, default: object = None) -> str:
        value = self._get(name, _REQUIRED if default is None else default)
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} is not a string")
        return value

    def flag(self, name: str) -> bool:
        value = self._get(name, False)
        if not isinstance(value, bool):
            raise ValueError(f"field {name!r} is not a boolean")
        return value

    def time(self, name: str, *, required: bool = False) -> datetime | None:
        value = self._get(name, _REQUIRED if required else None)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} is not a timestamp string")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"field {name!r} has no time zone")
        return parsed

    def blob(self, name: str) -> bytes:
        return base64.b64decode(self.text(name), validate=True)


_REQUIRED = object()


def _decode_finish(f: _Fields) -> Finish:
    time = f.time("time", required=True)
    assert time is not None
    return Finish(
        FinishReason(f.text("reason")), time, f.text("message", ""), f.text("details", "")
    )


_DECODERS: dict[str, Callable[[_Fields], Part]] = {
    "text": lambda f: Text(f.text("text")),
    "reasoning": lambda f: Reasoning(
        f.text("thinking", ""), f.text("signature", ""), f.time("started_at"), f.time("finished_at")
    ),
    "image_url": lambda f: ImageURL(f.text("url"), f.text("detail", "")),
    "binary": lambda f: Binary(f.text("path", ""), f.text("mime_type"), f.blob("data")),
    "tool_call": lambda f: ToolCall(
        f.text("id"),
        f.text("name"),
        f.text("input", ""),
        f.flag("finished"),
        f.flag("provider_executed"),
    ),
    "tool_result": lambda f: ToolResult(
        f.text("tool_call_id"),
        f.text("name"),
        f.text("content"),
        f.text("metadata", ""),
        f.flag("is_error"),
    ),
    "finish": _decode_finish,
}


def _decode_part(index: int, raw: object) -> Part:
    if not isinstance(raw, dict):
        raise ValueError(f"part {index} is not an object")
    tag = raw.get("type")
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise ValueError(f"part {index} has unknown type {tag!r}")
    try:
        return decoder(_Fields(raw.get("data")))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"part {index} ({tag}): {exc}") from None


def decode_parts(message_id: str, text: str) -> list[Part]:
    """Parse stored parts; raise ``CorruptRow`` naming ``message_id`` if anything is off."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, list):
            raise ValueError("parts are not a JSON array")
        return [_decode_part(i, item) for i, item in enumerate(raw)]
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptRow("message", message_id, str(exc)) from exc
