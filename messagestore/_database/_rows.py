"""Rows to model objects and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._codec import decode_parts, encode_parts
from .._errors import CorruptRow
from .._model import Message, Role, Session
from ._schema import messages, sessions

__all__ = [
    "MESSAGE_COLUMNS",
    "SESSION_COLUMNS",
    "deleted_message",
    "in_progress",
    "message_from_row",
    "message_values",
    "session_from_row",
]


SESSION_COLUMNS = (
    sessions.c.id,
    sessions.c.title,
    sessions.c.parent_session_id,
    sessions.c.message_count,
    sessions.c.prompt_tokens,
    sessions.c.completion_tokens,
    sessions.c.cost,
    sessions.c.summary_message_id,
    sessions.c.created_at,
    sessions.c.updated_at,
    sessions.c.revision,
)
MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.session_id,
    messages.c.role,
    messages.c.parts,
    messages.c.model,
    messages.c.provider,
    messages.c.created_at,
    messages.c.updated_at,
    messages.c.is_summary_message,
    messages.c.revision,
)


def session_from_row(row: Sequence[Any]) -> Session:
    return Session(*row)


def message_from_row(row: Sequence[Any]) -> Message:
    """Decode a row of ``MESSAGE_COLUMNS``; ``CorruptRow`` names the row if it cannot be."""
    message_id, session_id, role, parts, model, provider, created, updated, summary, rev = row
    try:
        role = Role(role)
    except ValueError:
        raise CorruptRow("message", message_id, f"unknown role {role!r}") from None
    return Message(
        message_id,
        session_id,
        role,
        decode_parts(message_id, parts),
        model,
        provider,
        created,
        updated,
        bool(summary),
        rev,
    )


def deleted_message(row: Sequence[Any]) -> Message:
    """A deleted row as it was; a corrupt one with its parts left empty."""
    try:
        return message_from_row(row)
    except CorruptRow:
        role = row[2] if row[2] in Role._value2member_map_ else Role.ASSISTANT
        return Message(row[0], row[1], Role(role), [], created_at=row[6], updated_at=row[7])


def in_progress(message: Message) -> bool:
    """True if a dead writer could have left this message half done (see ``_schema``)."""
    if message.role is Role.ASSISTANT and not message.is_finished:
        return True
    return bool(message.tool_calls)


def message_values(message: Message, writer_id: str | None) -> dict[str, Any]:
    """Column values for inserting ``message`` (its ``revision`` already set)."""
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": message.role.value,
        "parts": encode_parts(message.parts),
        "model": message.model,
        "provider": message.provider,
        "is_summary_message": message.is_summary_message,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
        "writer_id": writer_id,
        "revision": message.revision,
        "created_revision": message.revision,
        "in_progress": in_progress(message),
    }
