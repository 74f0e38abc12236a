"""The migrations build exactly the schema the code defines, and refuse a newer database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from messagestore import SchemaTooNew, open_store
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
