"""The migrations build exactly the schema the code defines, and refuse a newer database."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from messagestore import SchemaTooNew, migrations, open_store
from messagestore._database._engine import create_engine
from messagestore._database._migrate import head_revision
from messagestore._database._schema import metadata
from tests.support.paths import ROOT


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": False}
    )
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_tables(db_url: str) -> None:
    async with open_store(db_url) as store, store.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_database_of_newer_schema_is_refused(db_url: str) -> None:
    async with open_store(db_url) as store, store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with pytest.raises(SchemaTooNew, match="from_the_future"):
        await open_store(db_url)


def test_alembic_command_line_upgrades_from_the_repository_root(db_url: str) -> None:
    env = {**os.environ, "MESSAGESTORE_URL": db_url}
    for args in (["upgrade", "head"], ["current"]):
        done = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert head_revision() in done.stdout
    assert asyncio.run(_diff_of(db_url)) == []


async def _diff_of(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_diff)
    finally:
        await engine.dispose()


# -- messagestore.migrations: the public face of the migrations, for tools --------------------


async def test_the_migrations_module_reads_and_upgrades(db_url: str) -> None:
    head = migrations.head()
    assert head == head_revision()
    assert await migrations.current(db_url) == ()
    assert await migrations.upgrade(db_url) == ((), (head,))
    assert await migrations.upgrade(db_url) == ((head,), (head,))  # current: a no-op
    assert await migrations.current(db_url, connect_timeout=5) == (head,)
    assert await _diff_of(db_url) == []  # the same schema open_store builds
    async with open_store(db_url, read_only=True):
        pass  # and current, for a store that does not migrate


async def test_upgrade_refuses_a_newer_database(db_url: str) -> None:
    async with open_store(db_url) as store, store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with pytest.raises(SchemaTooNew, match="from_the_future"):
        await migrations.upgrade(db_url)
    assert await migrations.current(db_url) == ("from_the_future",)
    assert not migrations.is_known("from_the_future")


def test_history_lists_the_shipped_migrations_newest_first() -> None:
    history = migrations.history()
    assert history[0].revision == migrations.head() and history[0].is_head
    assert not any(m.is_head for m in history[1:])
    assert history[-1].down_revisions == ()
    for newer, older in itertools.pairwise(history):
        assert newer.down_revisions == (older.revision,)
    assert all(m.description for m in history)
    assert all(migrations.is_known(m.revision) for m in history)


async def test_current_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "store.db"
    assert await migrations.current(f"sqlite:///{path}") == ()
    assert not path.parent.exists()
