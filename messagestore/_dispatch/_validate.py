"""Checks of what callers hand the dispatcher, before anything is stored.

Bad input raises at once with a message naming what is wrong: ``InvalidMessage`` (also a
``ValueError``) for text, keys, metadata and delivery contexts, ``SessionNotFound`` for a
session id that cannot name a session.
"""

from __future__ import annotations

from .._errors import InvalidMessage, SessionNotFound
from .._validation import storable
from ._config import MAX_INPUT_CHARS

__all__ = ["MAX_KEY_CHARS", "check_key", "check_session_id", "check_text"]

MAX_KEY_CHARS = 1024


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
