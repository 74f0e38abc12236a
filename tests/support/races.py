"""Helpers of the race and failure tests: bounded waits, draining subscriptions, checks of
the database after a test (no write lock held, counts matching rows)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    Message,
    MessageNotFound,
    SessionNotFound,
    Store,
)
from messagestore._store import StoreOptions, open_store_with
from pubsub import Event, EventType

WAIT = 10.0  # upper bound for anything expected to happen


def opened(url: str, **options: Any) -> Any:
    """``open_store`` with the private knobs (``debounce``, ``lease_ttl``, ``idle_release``)."""
    return open_store_with(url, StoreOptions(**options))


@contextlib.asynccontextmanager
async def bounded(what: str, seconds: float = WAIT) -> AsyncIterator[None]:
    """Fail (not hang) if the block takes longer than ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        pytest.fail(f"{what} did not finish within {seconds} s")


async def drain(sub: Any) -> list[Event[Message]]:
    """Every event a subscription still holds once its store is closed; then close it."""
    try:
        async with asyncio.timeout(WAIT):
            return [event async for event in sub]
    finally:
        sub.close()


def last_events(events: list[Event[Message]]) -> dict[str, Event[Message]]:
    last: dict[str, Event[Message]] = {}
    for event in events:
        last[event.payload.id] = event
    return last


def assert_nothing_after_deleted(events: list[Event[Message]]) -> None:
    deleted: set[str] = set()
    for event in events:
        assert event.payload.id not in deleted, f"{event.type} after DELETED of {event.payload.id}"
        if event.type is EventType.DELETED:
            deleted.add(event.payload.id)


async def yield_randomly(rng: random.Random) -> None:
    """Let the loop run for a random while: a few turns, or a short real pause."""
    if rng.random() < 0.5:
        for _ in range(rng.randrange(0, 20)):
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(rng.uniform(0, 0.004))


async def cancel_at_random(rng: random.Random, call: Awaitable[Any]) -> None:
    """Start ``call``, cancel it at a random point, and wait until it has ended."""
    task = asyncio.ensure_future(call)
    await yield_randomly(rng)
    task.cancel()
    async with asyncio.timeout(WAIT):
        with contextlib.suppress(asyncio.CancelledError, MessageNotFound, SessionNotFound):
            await task


async def admin_query(url: str, sql: str) -> list[Any]:
    """Run ``sql`` on a connection of its own (PostgreSQL) and return the rows."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


async def assert_no_write_lock_held(url: str) -> None:
    """No connection of the store sits inside a transaction (SQLite: the write lock is free)."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        assert path is not None

        def try_lock() -> None:
            probe = sqlite3.connect(path, isolation_level=None, timeout=2.0)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            finally:
                probe.close()

        await asyncio.to_thread(try_lock)
        return
    rows = await admin_query(
        url,
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'",
    )
    assert rows == [], f"connections left inside a transaction: {rows}"


async def assert_counts_match_rows(store: Store) -> None:
    for session in await store.sessions.list():
        rows = await store.messages.list(session.id)
        assert session.message_count == len(rows), (session.title, session.message_count, rows)
