"""Alembic environment for messagestore (async engines: aiosqlite, asyncpg).

Two ways in:

* ``open_store()`` and ``messagestore db ...`` pass an open synchronous connection in
  ``config.attributes["connection"]``; migrations run on it, inside the caller's transaction.
* ``alembic upgrade head`` from the repository root: the URL comes from ``-x url=...``, else
  ``MESSAGESTORE_URL``, else the embedded SQLite default, and an async engine is made here.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from messagestore._config import default_url
from messagestore._database._engine import create_engine
from messagestore._database._schema import metadata
from messagestore._dispatch import _tables  # noqa: F401  (the dispatcher's tables join metadata)

config = context.config


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_configure_and_run)
    finally:
        await engine.dispose()


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or default_url()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _configure_and_run(given)
    else:
        asyncio.run(_run_with_own_engine(_url()))
