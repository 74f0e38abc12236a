"""Checks of what callers hand the dispatcher, before anything is stored.

Bad input raises at once with a message naming what is wrong: ``InvalidMessage`` (also a
``ValueError``) for text, keys, metadata and delivery contexts, ``SessionNotFound`` for a
session id that cannot name a session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._errors import InvalidMessage, SessionNotFound
from ._config import MAX_INPUT_CHARS

__all__ = ["MAX_KEY_CHARS", "check_json", "check_key", "check_session_id", "check_text"]

MAX_KEY_CHARS = 1024


def storable(value: str) -> bool:
    """True if every backend stores ``value`` in a text column as is (no NUL, no lone
    surrogate)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str):
        raise InvalidMessage(f"session_id must be a str, not {type(session_id).__name__}")
    if not session_id or not storable(session_id):
        raise SessionNotFound(session_id)
    return session_id


def check_text(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidMessage(f"input text must be a str, not {type(text).__name__}")
    if not text.strip():
        raise InvalidMessage("input text is empty (or only whitespace)")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidMessage(
            f"input text holds {len(text):,} characters; the limit is {MAX_INPUT_CHARS:,}"
        )
    return text


def check_key(name: str, key: object, *, required: bool = False) -> str | None:
    if key is None and not required:
        return None
    if not isinstance(key, str):
        raise InvalidMessage(f"{name} must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidMessage(f"{name} must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidMessage(f"{name} is longer than {MAX_KEY_CHARS} characters")
    if not storable(key):
        raise InvalidMessage(f"{name} contains a NUL character or a lone surrogate")
    return key


def check_json(name: str, value: object) -> Mapping[str, Any] | None:
    """A mapping that survives a JSON round trip (or None)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidMessage(f"{name} must be a mapping (JSON object), not {type(value).__name__}")
    try:
        json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"{name} is not JSON-serializable: {exc}") from None
    return value
