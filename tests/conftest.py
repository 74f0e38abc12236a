"""Shared fixtures: every store test runs on a real SQLite file and on real PostgreSQL.

PostgreSQL comes from ``MESSAGESTORE_TEST_POSTGRES_URL`` (default: the local server's ``test``
database). When it is unreachable its cases skip with the reason, unless
``MESSAGESTORE_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which turns that into a failure.

Each pytest process creates its own scratch database next to that one (dropped at the end), so
parallel runs never share tables; each PostgreSQL test starts from an empty schema there. Each
SQLite test gets its own file.

Every OS process a test starts belongs to the ``processes`` fixture, which ends it on teardown
whatever the test did (see ``tests/support/processes.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import Store, open_store
from tests.support.processes import Processes

BASE_POSTGRES_URL = os.environ.get(
    "MESSAGESTORE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("MESSAGESTORE_REQUIRE_POSTGRES") == "1"
_SCRATCH_DB = f"messagestore_test_{os.getpid()}"
POSTGRES_URL = make_url(BASE_POSTGRES_URL).set(database=_SCRATCH_DB).render_as_string(False)


async def _admin(statement: str) -> None:
    """Run a statement outside a transaction on the base database (CREATE/DROP DATABASE)."""
    engine = create_async_engine(BASE_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _drop_scratch_database() -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{_SCRATCH_DB}" WITH (FORCE)'))


_postgres_problem: str | None = None
_postgres_checked = False


async def _reset_postgres() -> None:
    """Drop every table in the test database's public schema (tests run one at a time)."""
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            names = (
                (
                    await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                )
                .scalars()
                .all()
            )
            if names:
                quoted = ", ".join(f'"{n}"' for n in names)
                await conn.execute(text(f"DROP TABLE IF EXISTS {quoted} CASCADE"))
    finally:
        await engine.dispose()


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None if it can (checked once per run)."""
    global _postgres_checked, _postgres_problem
    if not _postgres_checked:
        _postgres_checked = True
        try:
            asyncio.run(asyncio.wait_for(_admin(f'CREATE DATABASE "{_SCRATCH_DB}"'), 10))
        except Exception as exc:  # any failure to connect is a reason to skip
            _postgres_problem = f"PostgreSQL at {BASE_POSTGRES_URL} unreachable: {exc!r}"
        else:
            atexit.register(_drop_scratch_database)
    return _postgres_problem


def _require_postgres() -> None:
    problem = postgres_unavailable()
    if problem is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"MESSAGESTORE_REQUIRE_POSTGRES=1 but {problem}")
    pytest.skip(problem)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    _require_postgres()
    asyncio.run(_reset_postgres())
    yield POSTGRES_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file URL, for SQLite-only tests."""
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def postgres_url() -> str:
    """A fresh PostgreSQL database URL, for PostgreSQL-only tests."""
    _require_postgres()
    asyncio.run(_reset_postgres())
    return POSTGRES_URL


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """An open store with the default debounce on each backend; closed after the test."""
    async with open_store(db_url) as opened:
        yield opened


@pytest.fixture
async def sync_store(db_url: str) -> AsyncIterator[Store]:
    """An open store that writes every update synchronously (debounce 0)."""
    async with open_store(db_url, debounce=0) as opened:
        yield opened


@pytest.fixture
async def processes() -> AsyncIterator[Processes]:
    """Starts the test's OS processes and, on teardown (also after a failure or a timeout),
    terminates, kills and waits for every one still running."""
    owner = Processes()
    try:
        yield owner
    finally:
        await owner.close()
