"""The conversation model: sessions, messages and the parts a message is made of.

Parts are frozen dataclasses. A message's mutators replace a part instead of changing it, so
``Message.clone()`` is a shallow copy of the parts list and still shares nothing mutable with the
original. That keeps ``MessageService.update()``, which copies the message on every streamed
token, cheap.

A message has at most one ``Text``, one ``Reasoning`` and one ``Finish`` part; tool calls are
unique by id. The mutators keep those rules; ``validate()`` checks them for messages built by hand.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeAlias, TypeVar

from ._errors import InvalidMessage

__all__ = [
    "Binary",
    "Finish",
    "FinishReason",
    "ImageURL",
    "Message",
    "Part",
    "Reasoning",
    "Role",
    "Session",
    "Text",
    "ToolCall",
    "ToolResult",
    "MAX_FIELD_CHARS",
    "MAX_MESSAGE_CHARS",
    "check_part_fields",
    "new_id",
    "utc_now",
]


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh random identifier (sessions, messages, writers, dispatcher inputs and turns)."""
    return str(uuid.uuid4())


class Role(StrEnum):
    """Who authored a message."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class FinishReason(StrEnum):
    """Why an assistant message ended."""

    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    TOOL_USE = "tool_use"
    CANCELED = "canceled"
    ERROR = "error"
    CONTENT_FILTER = "content_filter"
    PERMISSION_DENIED = "permission_denied"
    INTERRUPTED = "interrupted"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Text:
    """Visible text of a message."""

    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    """The model's thinking; ``finished_at`` is set once, when reasoning ends."""

    thinking: str = ""
    signature: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ImageURL:
    """An image referenced by URL."""

    url: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Binary:
    """Inline binary content such as an attached file."""

    path: str
    mime_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation requested by the model; ``finished`` once its input is complete."""

    id: str
    name: str
    input: str = ""
    finished: bool = False
    provider_executed: bool = False


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The result of a tool call, usually carried by a ``Role.TOOL`` message."""

    tool_call_id: str
    name: str
    content: str
    metadata: str = ""
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of a message: why, when, and optional detail for errors."""

    reason: FinishReason
    time: datetime
    message: str = ""
    details: str = ""


Part: TypeAlias = Text | Reasoning | ImageURL | Binary | ToolCall | ToolResult | Finish

PART_TYPES: tuple[type, ...] = (Text, Reasoning, ImageURL, Binary, ToolCall, ToolResult, Finish)

_P = TypeVar("_P", Text, Reasoning, ImageURL, Binary, ToolCall, ToolResult, Finish)


@dataclass(slots=True)
class Message:
    """One message of a session, as stored.

    Read properties derive from ``parts``; mutators keep the one-part-per-kind rules. A message
    is normally created by ``MessageService.create`` (which assigns ``id`` and timestamps) and
    changed with the mutators before each ``MessageService.update``.
    """

    id: str
    session_id: str
    role: Role
    parts: list[Part] = field(default_factory=list)
    model: str = ""
    provider: str = ""
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    is_summary_message: bool = False
    revision: int = field(default=0, compare=False)
    """The database-wide revision of the change that stored this state (0: not stored yet).

    Set by the store on what it returns and announces; ``update()`` ignores it. Not part of
    equality: two messages with the same content are equal whatever revision stored them.
    """

    # -- read properties ---------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The message's text, or ``""``."""
        part = self._find(Text)
        return part.text if part is not None else ""

    @property
    def reasoning(self) -> Reasoning | None:
        """The reasoning part, if any."""
        return self._find(Reasoning)

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Tool calls in the order they were added."""
        return [p for p in self.parts if isinstance(p, ToolCall)]

    @property
    def tool_results(self) -> list[ToolResult]:
        """Tool results in the order they were added."""
        return [p for p in self.parts if isinstance(p, ToolResult)]

    @property
    def finish(self) -> Finish | None:
        """The finish part, if the message ended."""
        return self._find(Finish)

    @property
    def is_finished(self) -> bool:
        """True once the message has a finish part."""
        return self._find(Finish) is not None

    def _find(self, kind: type[_P]) -> _P | None:
        for part in self.parts:
            if isinstance(part, kind):
                return part
        return None

    def _index(self, kind: type) -> int:
        for i, part in enumerate(self.parts):
            if isinstance(part, kind):
                return i
        return -1

    # -- mutators ----------------------------------------------------------------------------

    def append_text(self, delta: str) -> None:
        """Append ``delta`` to the text part, creating it if needed."""
        i = self._index(Text)
        if i < 0:
            self.parts.append(Text(delta))
        else:
            self.parts[i] = Text(self.parts[i].text + delta)  # type: ignore[union-attr]

    def append_reasoning(self, delta: str) -> None:
        """Append ``delta`` to the reasoning part, creating it (with ``started_at``) if needed."""
        i = self._index(Reasoning)
        if i < 0:
            self.parts.append(Reasoning(thinking=delta, started_at=utc_now()))
            return
        current: Reasoning = self.parts[i]  # type: ignore[assignment]
        started = current.started_at or utc_now()
        self.parts[i] = dataclasses.replace(
            current, thinking=current.thinking + delta, started_at=started
        )

    def set_reasoning_signature(self, signature: str) -> None:
        """Set the provider's signature of the reasoning part (creating the part if needed)."""
        i = self._index(Reasoning)
        if i < 0:
            self.parts.append(Reasoning(signature=signature, started_at=utc_now()))
        else:
            current: Reasoning = self.parts[i]  # type: ignore[assignment]
            self.parts[i] = dataclasses.replace(current, signature=signature)

    def finish_reasoning(self) -> None:
        """Mark reasoning as ended: sets ``finished_at`` once; later calls change nothing."""
        i = self._index(Reasoning)
        if i < 0:
            now = utc_now()
            self.parts.append(Reasoning(started_at=now, finished_at=now))
            return
        current: Reasoning = self.parts[i]  # type: ignore[assignment]
        if current.finished_at is None:
            self.parts[i] = dataclasses.replace(current, finished_at=utc_now())

    def add_tool_call(self, call: ToolCall) -> None:
        """Add ``call``, or replace the tool call with the same id in place (upsert)."""
        for i, part in enumerate(self.parts):
            if isinstance(part, ToolCall) and part.id == call.id:
                self.parts[i] = call
                return
        self.parts.append(call)

    def add_tool_result(self, result: ToolResult) -> None:
        """Append a tool result."""
        self.parts.append(result)

    def add_finish(self, reason: FinishReason | str, message: str = "", details: str = "") -> None:
        """Finish the message; an earlier finish is replaced."""
        finish = Finish(FinishReason(reason), utc_now(), message, details)
        i = self._index(Finish)
        if i < 0:
            self.parts.append(finish)
        else:
            self.parts[i] = finish

    def add_image_url(self, url: str, detail: str = "") -> None:
        """Append an image reference."""
        self.parts.append(ImageURL(url, detail))

    def add_binary(self, path: str, mime_type: str, data: bytes) -> None:
        """Append inline binary content."""
        self.parts.append(Binary(path, mime_type, bytes(data)))

    def clone(self) -> Message:
        """A copy sharing nothing mutable with this message (parts themselves are frozen)."""
        return Message(
            self.id,
            self.session_id,
            self.role,
            list(self.parts),
            self.model,
            self.provider,
            self.created_at,
            self.updated_at,
            self.is_summary_message,
            self.revision,
        )

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``InvalidMessage`` naming what is wrong, or return if the message is sound."""
        _check_str(self, "id", self.id, nonempty=True)
        _check_str(self, "session_id", self.session_id, nonempty=True)
        if not isinstance(self.role, Role):
            try:
                Role(self.role)
            except ValueError:
                raise InvalidMessage(f"message {self.id!r}: unknown role {self.role!r}") from None
        _check_str(self, "model", self.model)
        _check_str(self, "provider", self.provider)
        if not isinstance(self.is_summary_message, bool):
            raise InvalidMessage(f"message {self.id!r}: is_summary_message must be a bool")
        for name in ("created_at", "updated_at"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidMessage(
                    f"message {self.id!r}: {name} must be a timezone-aware datetime"
                )
        if not isinstance(self.parts, list):
            raise InvalidMessage(f"message {self.id!r}: parts must be a list")
        _check_parts(self.id, self.parts)


def _check_str(msg: Message, name: str, value: object, *, nonempty: bool = False) -> None:
    if not isinstance(value, str):
        raise InvalidMessage(
            f"message {msg.id!r}: {name} must be a str, not {type(value).__name__}"
        )
    if nonempty and not value:
        raise InvalidMessage(f"message {msg.id!r}: {name} must not be empty")


_SINGLETONS = (Text, Reasoning, Finish)


MAX_FIELD_CHARS = 16 * 1024 * 1024
"""Longest string one part field may hold (characters)."""
MAX_MESSAGE_CHARS = 32 * 1024 * 1024
"""Most characters a message's parts may hold in all (binary data counted as base64).

Stored JSON escapes non-ASCII characters (up to 12 bytes each), so this keeps every message
under SQLite's 1,000,000,000-byte value limit and PostgreSQL's 1 GB text limit: one oversized
message is refused by ``update()`` instead of failing the group commit it would join.
"""


def _part_size(part: Part) -> int:
    """Characters the part adds to the stored JSON, before escaping (bytes as base64)."""
    if isinstance(part, Binary):
        return len(part.path) + len(part.mime_type) + (len(part.data) + 2) // 3 * 4
    return sum(len(v) for v in _strings(part))


def _strings(part: Part) -> list[str]:
    return [v for name, _ in _FIELD_TYPES[type(part)] if isinstance(v := getattr(part, name), str)]


def _check_size(message_id: str, index: int, part: Part, total: int) -> int:
    for value in _strings(part):
        if len(value) > MAX_FIELD_CHARS:
            raise InvalidMessage(
                f"message {message_id!r}: a {type(part).__name__} field of part {index} holds "
                f"{len(value):,} characters; the limit is {MAX_FIELD_CHARS:,}"
            )
    total += _part_size(part)
    if total > MAX_MESSAGE_CHARS:
        raise InvalidMessage(
            f"message {message_id!r}: its parts hold more than {MAX_MESSAGE_CHARS:,} characters "
            "(binary data counted as base64); store large content elsewhere and link it"
        )
    return total


def _check_parts(message_id: str, parts: list[Part]) -> None:
    seen: set[type] = set()
    tool_ids: set[str] = set()
    size = 0
    for index, part in enumerate(parts):
        kind = type(part)
        if kind not in PART_TYPES:
            raise InvalidMessage(
                f"message {message_id!r}: part {index} is a {kind.__name__}, not a message part"
            )
        if kind in _SINGLETONS:
            if kind in seen:
                raise InvalidMessage(f"message {message_id!r}: more than one {kind.__name__} part")
            seen.add(kind)
        check_part_fields(message_id, index, part)
        size = _check_size(message_id, index, part, size)
        if isinstance(part, ToolCall):
            if not part.id:
                raise InvalidMessage(f"message {message_id!r}: tool call {index} has no id")
            if part.id in tool_ids:
                raise InvalidMessage(
                    f"message {message_id!r}: tool call id {part.id!r} appears twice"
                )
            tool_ids.add(part.id)


_FIELD_TYPES: dict[type, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    Text: (("text", str),),
    Reasoning: (
        ("thinking", str),
        ("signature", str),
        ("started_at", (datetime, type(None))),
        ("finished_at", (datetime, type(None))),
    ),
    ImageURL: (("url", str), ("detail", str)),
    Binary: (("path", str), ("mime_type", str), ("data", bytes)),
    ToolCall: (
        ("id", str),
        ("name", str),
        ("input", str),
        ("finished", bool),
        ("provider_executed", bool),
    ),
    ToolResult: (
        ("tool_call_id", str),
        ("name", str),
        ("content", str),
        ("metadata", str),
        ("is_error", bool),
    ),
    Finish: (("reason", FinishReason), ("time", datetime), ("message", str), ("details", str)),
}


def check_part_fields(message_id: str, index: int, part: Part) -> None:
    """Type-check one part's fields; datetimes must be timezone-aware."""
    for name, expected in _FIELD_TYPES[type(part)]:
        value = getattr(part, name)
        if not isinstance(value, expected):
            raise InvalidMessage(
                f"message {message_id!r}: {type(part).__name__}.{name} of part {index} "
                f"has type {type(value).__name__}"
            )
        if isinstance(value, datetime) and value.tzinfo is None:
            raise InvalidMessage(
                f"message {message_id!r}: {type(part).__name__}.{name} of part {index} "
                "is a naive datetime; use a timezone-aware one"
            )


@dataclass(slots=True)
class Session:
    """A conversation; counters are maintained by the store."""

    id: str
    title: str
    parent_session_id: str | None = None
    message_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    summary_message_id: str | None = None
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    revision: int = field(default=0, compare=False)
    """The database-wide revision of the change that stored this state (0: not stored yet)."""
