"""Where the embedded database lives, and how to override it.

The embedded default is ``$XDG_DATA_HOME/messagestore/messages.db`` (``XDG_DATA_HOME`` defaults
to ``~/.local/share``). ``MESSAGESTORE_URL`` overrides it with any SQLAlchemy async URL, for
example ``sqlite+aiosqlite:///./chat.db`` or ``postgresql+asyncpg://user@host/db``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["URL_ENV", "default_database_path", "default_url", "resolve_url"]

URL_ENV = "MESSAGESTORE_URL"


def default_database_path() -> Path:
    """The embedded SQLite file used when no URL is given."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "messagestore" / "messages.db"


def default_url() -> str:
    """``MESSAGESTORE_URL`` if set, else the embedded SQLite file's URL."""
    return os.environ.get(URL_ENV) or f"sqlite+aiosqlite:///{default_database_path()}"


def resolve_url(url: str | None) -> str:
    """The URL to open: the one given, else :func:`default_url`."""
    return url if url else default_url()
