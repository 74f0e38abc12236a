"""A change of one message as a delta: what grew, which parts are new, which fields changed.

A ``MessageDelta`` applies to the message at revision ``base`` only: each ``append`` entry
appends to a streamed field of a part (``Text.text``, ``Reasoning.thinking``,
``ToolCall.input``), each ``parts`` entry replaces or adds the part at its index, each ``set``
entry replaces a top-level field of the message's JSON (``_message_json``), and the revision
becomes ``revision``. A change that removes parts has no delta. The JSON form::

    {"id": "...", "base": 42, "revision": 57, "append": {"0": "more"},
     "parts": {"3": {"type": "tool_call", "data": {...}}}, "set": {"finished": true}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._growth import diff, grow, grown
from ._message_json import SETTABLE_KEYS, changed_fields, parse_field, part_from_json, part_json
from ._model import Message, Part

__all__ = ["MessageDelta"]

_KEYS = frozenset({"id", "base", "revision", "append", "parts", "set"})
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
"""A part index as a key: plain decimal, below a billion (no message has that many parts)."""


@dataclass(frozen=True, slots=True)
class MessageDelta:
    """The change from the state of message ``id`` at revision ``base`` to its state at
    ``revision`` (see the module docstring for the rules).

    ``append`` maps part indexes to the text their streamed field grew by; ``parts`` maps part
    indexes to whole parts (replaced, or added at the end); ``set`` maps top-level keys of the
    message's JSON form to their new JSON values (``"updated_at"`` to an ISO 8601 string,
    ``"finished"`` to a boolean, ...). Treat the mappings as read-only.
    """

    id: str
    base: int
    revision: int
    append: Mapping[int, str] = field(default_factory=dict, hash=False)
    parts: Mapping[int, Part] = field(default_factory=dict, hash=False)
    set: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def between(cls, old: Message, new: Message) -> MessageDelta | None:
        """The delta that turns ``old`` into ``new``, or None when no delta can say it (another
        message, or parts removed).

        ``base`` is ``old.revision`` and ``revision`` is ``new.revision``. A part whose
        streamed field grew at its end while nothing else about it changed is an ``append``;
        any other changed part is sent whole in ``parts``. For valid messages (``validate``),
        ``between(old, new).apply(old)`` equals ``new`` in every field, revision included, and
        so does their JSON form. Cheap when only streamed fields grew: no part is encoded.
        """
        if old.id != new.id or len(new.parts) < len(old.parts):
            return None
        appends = diff(old, new)  # the common case: a streamed field grew, nothing else
        append: dict[int, str]
        parts: dict[int, Part] = {}
        if appends is not None:
            append = {index: text for index, _, text in appends}
        else:
            append = {}
            old_parts, new_parts = old.parts, new.parts
            for index, old_part in enumerate(old_parts):
                new_part = new_parts[index]
                if new_part is old_part:
                    continue
                text = grown(old_part, new_part)
                if text is None:
                    parts[index] = new_part
                elif text:
                    append[index] = text
            for index in range(len(old_parts), len(new_parts)):
                parts[index] = new_parts[index]
        return cls(new.id, old.revision, new.revision, append, parts, changed_fields(old, new))

    def apply(self, message: Message) -> Message:
        """``message`` with this delta applied, as a new message (``message`` is untouched).

        Raises ``ValueError`` when ``message.revision`` is not ``base`` (its copy is stale or
        ahead: use a whole state instead), when ``message`` is another message, or when the
        delta does not fit it (an append to a part it lacks or one without a streamed field, a
        part added past its end, a field value of the wrong type, ``finished`` disagreeing
        with the parts).
        """
        if message.id != self.id:
            raise ValueError(f"the delta is for message {self.id!r}, not {message.id!r}")
        if message.revision != self.base:
            raise ValueError(
                f"the delta applies to revision {self.base} of message {self.id!r}; "
                f"this copy is at revision {message.revision}"
            )
        parts = list(message.parts)
        for index, text in self.append.items():
            if index in self.parts:
                raise ValueError(f"part {index} is both appended to and replaced")
            if not 0 <= index < len(parts):
                raise ValueError(f"append to part {index}: the message has {len(parts)} parts")
            try:
                parts[index] = grow(parts[index], text)
            except ValueError as exc:
                raise ValueError(f"append to part {index}: {exc}") from None
        for index in sorted(self.parts):
            if index < len(parts):
                parts[index] = self.parts[index]
            elif index == len(parts):
                parts.append(self.parts[index])
            else:
                raise ValueError(f"part {index} would be added past the end ({len(parts)} parts)")
        values: dict[str, Any] = {}
        for key, value in self.set.items():
            values[key] = parse_field(key, value)
        finished = values.pop("finished", message.is_finished)
        result = Message(
            message.id,
            values.get("session_id", message.session_id),
            values.get("role", message.role),
            parts,
            values.get("model", message.model),
            values.get("provider", message.provider),
            values.get("created_at", message.created_at),
            values.get("updated_at", message.updated_at),
            values.get("is_summary_message", message.is_summary_message),
            self.revision,
        )
        if result.is_finished != finished:
            raise ValueError(
                f"finished would be {finished} but the parts "
                + ("include a finish" if result.is_finished else "include no finish")
            )
        return result

    def merge(self, later: MessageDelta) -> MessageDelta | None:
        """One delta that does what this one and then ``later`` do, or None when ``later``
        does not follow this one (another message, or ``later.base`` is not ``revision``).

        For a subscriber that fell behind: the changes it missed, merged, instead of the
        whole message. Appends to the same part are concatenated; a part ``later`` sends
        whole replaces what this one did to it; an append of ``later`` to a part this one
        sent whole grows that part; ``set`` takes ``later``'s values over this one's. So
        ``a.merge(b).apply(m) == b.apply(a.apply(m))`` whenever both fit.
        """
        if later.id != self.id or later.base != self.revision:
            return None
        append = dict(self.append)
        parts = dict(self.parts)
        for index, text in later.append.items():
            if index in parts:
                try:
                    parts[index] = grow(parts[index], text)
                except ValueError:
                    return None  # ``later`` does not fit what this one made: no merge
            else:
                append[index] = append.get(index, "") + text
        for index, part in later.parts.items():
            parts[index] = part
            append.pop(index, None)
        fields = {**self.set, **later.set} if later.set else self.set
        return MessageDelta(self.id, self.base, later.revision, append, parts, fields)

    def to_json(self) -> dict[str, Any]:
        """The delta's JSON object (see the module docstring); empty mappings are left out."""
        out: dict[str, Any] = {"id": self.id, "base": self.base, "revision": self.revision}
        if self.append:
            out["append"] = {str(i): self.append[i] for i in sorted(self.append)}
        if self.parts:
            out["parts"] = {str(i): part_json(self.parts[i]) for i in sorted(self.parts)}
        if self.set:
            out["set"] = dict(self.set)
        return out

    @classmethod
    def from_json(cls, value: object) -> MessageDelta:
        """The delta a JSON object describes; ``ValueError`` naming what is wrong.

        Strict: ``id``, ``base`` and ``revision`` present (a non-empty string, integers of
        at least 0), no unknown keys; indexes are integers of at least 0 in plain decimal
        (``"3"``, not ``"03"``, ``"-1"`` or ``"3.0"``), no index both in ``append`` and
        ``parts``; appended text is a string, parts decode, ``set`` names only top-level fields
        other than ``id``, ``parts`` and ``revision``, each with a value of its type.
        Whether the delta fits a message (its parts, its revision) is for ``apply`` to tell.
        """
        if not isinstance(value, Mapping):
            raise ValueError(f"a delta is a JSON object, not {type(value).__name__}")
        unknown = sorted(str(key) for key in value if key not in _KEYS)
        if unknown:
            raise ValueError(f"delta has unknown keys: {', '.join(unknown)}")
        for key in ("id", "base", "revision"):
            if key not in value:
                raise ValueError(f"delta lacks {key!r}")
        message_id = value["id"]
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("delta id is not a non-empty string")
        base = _revision("base", value["base"])
        revision = _revision("revision", value["revision"])
        append = {
            index: _append_text(index, text)
            for index, text in _entries("append", value.get("append", {})).items()
        }
        parts = {
            index: part_from_json(index, raw)
            for index, raw in _entries("parts", value.get("parts", {})).items()
        }
        both = sorted(append.keys() & parts.keys())
        if both:
            raise ValueError(f"delta appends to and replaces part {both[0]}")
        fields = value.get("set", {})
        if not isinstance(fields, Mapping):
            raise ValueError(f"delta set is not an object but {type(fields).__name__}")
        for key, field_value in fields.items():
            if key not in SETTABLE_KEYS:
                why = "is the delta's own field" if key == "revision" else "is not a settable field"
                raise ValueError(f"delta set: {key!r} {why}")
            parse_field(key, field_value)
        return cls(message_id, base, revision, append, parts, dict(fields))


def _revision(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"delta {name} {value!r} is not an integer of at least 0")
    return value


def _entries(name: str, value: object) -> dict[int, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"delta {name} is not an object but {type(value).__name__}")
    entries: dict[int, object] = {}
    for key, entry in value.items():
        if not isinstance(key, str) or _INDEX.fullmatch(key) is None:
            raise ValueError(
                f"delta {name} key {key!r} is not a part index (0, 1, 2, ... in plain decimal)"
            )
        entries[int(key)] = entry
    return entries


def _append_text(index: int, text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"delta append {index} is not a string but {type(text).__name__}")
    return text
