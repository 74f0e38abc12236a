"""Bring a database to the newest schema with the migrations shipped in the package.

The migration scripts live in the repository's ``alembic/`` folder, shipped inside the package
as ``messagestore/_database/_migrations`` so that an installed store can migrate itself.
Upgrades run in one write transaction; on PostgreSQL an advisory lock makes concurrent openers
wait for each other.
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .._errors import SchemaTooNew, SchemaTooOld
from ._tx import Tx

__all__ = [
    "alembic_config",
    "check_current",
    "current_revision",
    "current_revision_job",
    "head_revision",
    "upgrade",
    "upgrade_job",
]

# An arbitrary constant: the PostgreSQL advisory lock that serializes schema upgrades.
_PG_MIGRATION_LOCK = 0x6D736773


def alembic_config() -> Config:
    """An alembic ``Config`` pointing at the packaged migration scripts."""
    config = Config()
    config.set_main_option(
        "script_location", str(files("messagestore") / "_database" / "_migrations")
    )
    return config


def head_revision() -> str:
    """The newest revision this version of messagestore knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def check_current(heads: tuple[str, ...], where: str) -> None:
    """Raise unless ``heads`` (what ``current_revision_job`` read) is the newest revision this
    messagestore ships: ``SchemaTooNew`` for one it does not know, ``SchemaTooOld`` for an older
    one or none. For a store that reads without migrating; ``where`` names the database."""
    _check_known(alembic_config(), heads)
    if not heads:
        raise SchemaTooOld(f"no messagestore schema in {where} (run `messagestore db upgrade`)")
    head = head_revision()
    for revision in heads:
        if revision != head:
            raise SchemaTooOld(
                f"the database is at schema revision {revision!r}, older than this "
                f"messagestore's {head!r}; run `messagestore db upgrade`"
            )


def _current(conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(conn).get_current_heads())


def _check_known(config: Config, heads: tuple[str, ...]) -> None:
    script = ScriptDirectory.from_config(config)
    for head in heads:
        try:
            script.get_revision(head)
        except CommandError:
            raise SchemaTooNew(
                f"the database is at schema revision {head!r}, which this messagestore does "
                f"not know (newest known: {head_revision()!r}); upgrade messagestore"
            ) from None


def _upgrade_sync(conn: Connection, config: Config) -> None:
    _check_known(config, _current(conn))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def upgrade_job(tx: Tx) -> None:
    """Migrate to the newest revision inside the caller's transaction (a database job).

    On PostgreSQL an advisory lock, held to the commit, makes concurrent openers wait for
    each other.
    """
    conn = tx.conn
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    _upgrade_sync(conn, alembic_config())


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database behind ``engine`` to the newest revision; no-op when current."""
    config = alembic_config()
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        await conn.run_sync(_upgrade_sync, config)


def current_revision_job(tx: Tx) -> tuple[str, ...]:
    """The revision(s) the database is at (a database job); empty before the first upgrade."""
    return _current(tx.conn)


async def current_revision(engine: AsyncEngine) -> tuple[str, ...]:
    """The revision(s) the database is at; empty before the first upgrade."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
