"""A message as JSON — what ``GET /api/messages/{id}`` answers and the feed sends — and back.

The object is ``{"id", "session_id", "role", "model", "provider", "created_at", "updated_at",
"is_summary_message", "finished", "parts", "revision"}``: ``parts`` in the stored format
(``{"type": TAG, "data": {...}}``, bytes in base64, times in ISO 8601 with offset, see
``_codec``), ``finished`` whether the parts hold a finish, ``revision`` the revision that
stored this state. The server's responses and the wire deltas (``_delta``) both build on the
helpers here, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any

from ._codec import _decode_part, _encode_part, encode_parts
from ._model import Message, Part, Role

__all__ = [
    "MESSAGE_KEYS",
    "SETTABLE_KEYS",
    "changed_fields",
    "iso_time",
    "message_from_json",
    "message_json",
    "parse_field",
    "part_from_json",
    "part_json",
]

MESSAGE_KEYS = (
    "id",
    "session_id",
    "role",
    "model",
    "provider",
    "created_at",
    "updated_at",
    "is_summary_message",
    "finished",
    "parts",
    "revision",
)
"""The keys of a message's JSON object, in the order it is written."""


def message_json(message: Message) -> dict[str, Any]:
    """The JSON object for one message (see the module docstring)."""
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": str(message.role),
        "model": message.model,
        "provider": message.provider,
        "created_at": message.created_at.isoformat(),
        "updated_at": message.updated_at.isoformat(),
        "is_summary_message": message.is_summary_message,
        "finished": message.is_finished,
        "parts": json.loads(encode_parts(message.parts)),
        "revision": message.revision,
    }


def part_json(part: Part) -> dict[str, Any]:
    """One part's JSON object, as in a message's ``parts``."""
    return _encode_part(part)


def part_from_json(index: int, value: object) -> Part:
    """The part a JSON object describes; ``ValueError`` naming ``index`` and what is wrong."""
    return _decode_part(index, value)


# -- the top-level fields besides id, parts and revision ------------------------------------


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _id(name: str, value: object) -> str:
    if not _text(name, value):
        raise ValueError(f"{name} is empty")
    return value  # type: ignore[return-value]


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} is not a boolean")
    return value


def _role(name: str, value: object) -> Role:
    try:
        return Role(_text(name, value))
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a role") from None


def _time(name: str, value: object) -> datetime:
    text = _text(name, value)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name} {value!r} has no time zone")
    return parsed


def _same(value: Any) -> Any:
    return value


def iso_time(value: datetime) -> str:
    """The JSON form of a timestamp field (``created_at``, ``updated_at``)."""
    return value.isoformat()


_iso = iso_time


_Field = tuple[Callable[[Message], Any], Callable[[Any], Any], Callable[[str, object], Any]]

# name: (the attribute, its JSON value, the attribute from a JSON value)
_FIELDS: dict[str, _Field] = {
    "session_id": (attrgetter("session_id"), _same, _id),
    "role": (attrgetter("role"), str, _role),
    "model": (attrgetter("model"), _same, _text),
    "provider": (attrgetter("provider"), _same, _text),
    "created_at": (attrgetter("created_at"), _iso, _time),
    "updated_at": (attrgetter("updated_at"), _iso, _time),
    "is_summary_message": (attrgetter("is_summary_message"), _same, _flag),
    "finished": (attrgetter("is_finished"), _same, _flag),
}

SETTABLE_KEYS = frozenset(_FIELDS)
"""The top-level keys a delta's ``set`` may replace: all but ``id``, ``parts``, ``revision``."""


def parse_field(name: str, value: object) -> Any:
    """The Python value of the top-level field ``name`` (one of ``SETTABLE_KEYS``) from its JSON
    value (a ``Role``, a ``datetime``, ...); ``ValueError`` naming the field if it is not one."""
    field = _FIELDS.get(name)
    if field is None:
        raise ValueError(f"{name!r} is not a field a delta sets")
    return field[2](name, value)


def changed_fields(old: Message, new: Message) -> dict[str, Any]:
    """The ``SETTABLE_KEYS`` fields whose JSON value differs, with ``new``'s values.

    JSON values are compared, so a timestamp that keeps its instant but not its UTC offset
    counts as changed.
    """
    changed: dict[str, Any] = {}
    for name, (get, encode, _) in _FIELDS.items():
        before, after = get(old), get(new)
        if before is not after and encode(before) != (value := encode(after)):
            changed[name] = value
    return changed


def message_from_json(value: object) -> Message:
    """The message a JSON object (``message_json``'s form) describes.

    Strict: every key present, no other, each of its type; the parts decode; ``finished``
    agrees with the parts; and the message is valid (``Message.validate``). Raises
    ``ValueError`` (``InvalidMessage`` for a broken model rule) naming what is wrong.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"a message is a JSON object, not {type(value).__name__}")
    missing = [key for key in MESSAGE_KEYS if key not in value]
    if missing:
        raise ValueError(f"message JSON lacks {', '.join(missing)}")
    unknown = sorted(str(key) for key in value if key not in MESSAGE_KEYS)
    if unknown:
        raise ValueError(f"message JSON has unknown keys: {', '.join(unknown)}")
    message_id = _id("id", value["id"])
    try:
        fields = {name: parse(name, value[name]) for name, (_, _, parse) in _FIELDS.items()}
        raw_parts = value["parts"]
        if not isinstance(raw_parts, list):
            raise ValueError("parts is not an array")
        parts = [part_from_json(i, raw) for i, raw in enumerate(raw_parts)]
        revision = value["revision"]
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise ValueError(f"revision {revision!r} is not a non-negative integer")
    except ValueError as exc:
        raise ValueError(f"message {message_id!r}: {exc}") from None
    message = Message(
        message_id,
        fields["session_id"],
        fields["role"],
        parts,
        fields["model"],
        fields["provider"],
        fields["created_at"],
        fields["updated_at"],
        fields["is_summary_message"],
        revision,
    )
    if fields["finished"] != message.is_finished:
        held = "include a finish" if message.is_finished else "include no finish"
        raise ValueError(
            f"message {message_id!r}: finished is {fields['finished']} but its parts {held}"
        )
    message.validate()
    return message
