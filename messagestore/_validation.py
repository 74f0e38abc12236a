"""Checks of input that every layer shares: storable text, the fields a row keeps for life, JSON.

Each check lives here once, below the services, the write path and the database code that
all use it; each raises ``InvalidMessage`` (a ``ValueError``) naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._errors import InvalidMessage
from ._model import Message, Role

__all__ = [
    "LIFELONG_FIELDS",
    "Lifelong",
    "changed_lifelong",
    "check_json_object",
    "MAX_SESSION_ID_CHARS",
    "check_session_id_choice",
    "check_session_text",
    "check_storable",
    "lifelong_of",
    "storable",
]

# -- text the database can store ---------------------------------------------------------------


def storable(value: object) -> bool:
    """True if ``value`` is text every backend stores as is: no NUL, no lone surrogate.

    (PostgreSQL cannot store NUL in text; neither driver encodes a lone surrogate.) Ids the
    store generates are always storable, so an id that is not cannot name a row.
    """
    if not isinstance(value, str):
        return False
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def check_storable(message_id: str, name: str, value: str) -> None:
    """Raise ``InvalidMessage`` if a column-stored field of a message cannot be stored."""
    if not storable(value):
        raise InvalidMessage(
            f"message {message_id!r}: {name} contains a NUL character or a lone surrogate, "
            "which the database cannot store (only parts may hold arbitrary text)"
        )


def check_session_text(title: object, parent_session_id: object) -> None:
    """Raise ``InvalidMessage`` for a session title or parent id the database cannot store."""
    if not isinstance(title, str):
        raise InvalidMessage(f"session title must be a str, not {type(title).__name__}")
    if not storable(title):
        raise InvalidMessage(
            "session title contains a NUL character or a lone surrogate, which the database "
            "cannot store"
        )
    if parent_session_id is None:
        return
    if not isinstance(parent_session_id, str):
        raise InvalidMessage("parent_session_id must be a str or None")
    if not storable(parent_session_id):
        raise InvalidMessage(
            "parent_session_id contains a NUL character or a lone surrogate, which the "
            "database cannot store"
        )


MAX_SESSION_ID_CHARS = 255
"""The longest session id a caller may choose (``sessions.create(title, id=...)``)."""


def check_session_id_choice(session_id: object) -> str:
    """A session id a caller chose, or ``InvalidMessage`` naming what is wrong: a non-empty
    ``str`` of at most ``MAX_SESSION_ID_CHARS`` characters the database can store."""
    if not isinstance(session_id, str):
        raise InvalidMessage(f"session id must be a str, not {type(session_id).__name__}")
    if not session_id:
        raise InvalidMessage("session id must not be empty")
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise InvalidMessage(
            f"session id holds {len(session_id):,} characters; the limit is {MAX_SESSION_ID_CHARS}"
        )
    if not storable(session_id):
        raise InvalidMessage(
            "session id contains a NUL character or a lone surrogate, which the database "
            "cannot store"
        )
    return session_id


# -- the fields a row keeps for life -----------------------------------------------------------

LIFELONG_FIELDS = ("session_id", "role", "created_at")
"""The fields a message row keeps for life: an update may never change them."""
Lifelong = tuple[str, Role, datetime]
"""Their values, in ``LIFELONG_FIELDS`` order."""


def lifelong_of(message: Message) -> Lifelong:
    return (message.session_id, message.role, message.created_at)


def changed_lifelong(message: Message, known: Lifelong) -> InvalidMessage | None:
    """The error for ``message`` if it changes one of the ``known`` lifelong values, else None."""
    for name, old in zip(LIFELONG_FIELDS, known, strict=True):
        new = getattr(message, name)
        if old != new:
            return InvalidMessage(
                f"message {message.id!r}: {name} cannot change once stored "
                f"({old!r} -> {new!r}); create a new message instead"
            )
    return None


# -- JSON --------------------------------------------------------------------------------------


def check_json_object(name: str, value: object) -> Mapping[str, Any] | None:
    """``value`` if it is None or a mapping ``json.dumps`` accepts (the dispatcher's metadata
    and delivery contexts); else ``InvalidMessage`` naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidMessage(f"{name} must be a mapping (JSON object), not {type(value).__name__}")
    try:
        json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"{name} is not JSON-serializable: {exc}") from None
    return value
