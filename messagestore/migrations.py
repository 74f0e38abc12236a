"""The schema migrations this messagestore ships, for tools: where a database is, upgrading it.

::

    migrations.head()                               # the newest revision this messagestore knows
    await migrations.current(url)                   # the database's revision(s); () if none
    before, after = await migrations.upgrade(url)   # what open_store does on open
    for migration in migrations.history(): ...      # newest first

``open_store`` migrates by itself; these are for tools that must not, or must only migrate.
``url`` is resolved as ``open_store`` resolves it; ``connect_timeout`` bounds the connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ._config import resolve_url
from ._database._engine import create_engine, normalize_url, sqlite_file
from ._database._migrate import alembic_config, current_revision, head_revision
from ._database._migrate import upgrade as _upgrade

__all__ = ["Migration", "current", "head", "history", "is_known", "upgrade"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One shipped migration."""

    revision: str
    down_revisions: tuple[str, ...]
    """The revision(s) it upgrades from; empty for the first."""
    description: str
    is_head: bool
    """True for the newest: a database at it is current."""


def head() -> str:
    """The newest revision this messagestore ships: a database at it is current."""
    return head_revision()


def is_known(revision: str) -> bool:
    """True if this messagestore ships ``revision``; False for one a newer messagestore wrote."""
    try:
        _script().get_revision(revision)
    except CommandError:
        return False
    return True


def history() -> list[Migration]:
    """The shipped migrations, newest first. Opens no database."""
    script = _script()
    heads = set(script.get_heads())
    migrations = []
    for revision in script.walk_revisions():
        down = revision.down_revision
        downs = tuple(down) if isinstance(down, tuple | list) else (() if down is None else (down,))
        doc = revision.doc or ""
        migrations.append(Migration(revision.revision, downs, doc, revision.revision in heads))
    return migrations


async def current(
    url: str | None = None, *, connect_timeout: float | None = None
) -> tuple[str, ...]:
    """The revision(s) the database is at; empty before the first upgrade, and for an SQLite
    file that does not exist (which is not created). Changes nothing."""
    path = sqlite_file(resolve_url(url))
    if path is not None and not path.exists():
        return ()
    engine = _engine(url, connect_timeout)
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()


async def upgrade(
    url: str | None = None, *, connect_timeout: float | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Bring the database to the newest revision, as ``open_store`` does on open, in one
    transaction (on PostgreSQL concurrent upgraders wait for each other). Returns the
    revisions before and after; equal when it was current. A database that a newer
    messagestore migrated raises ``SchemaTooNew`` and is left unchanged."""
    engine = _engine(url, connect_timeout)
    try:
        before = await current_revision(engine)
        await _upgrade(engine)
        after = await current_revision(engine)
    finally:
        await engine.dispose()
    return before, after


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def _engine(url: str | None, connect_timeout: float | None) -> AsyncEngine:
    resolved = normalize_url(resolve_url(url))
    kwargs: dict[str, Any] = {}
    if connect_timeout is not None and make_url(resolved).get_backend_name() != "sqlite":
        kwargs["connect_args"] = {"timeout": connect_timeout}
    return create_engine(resolved, **kwargs)
