"""Regression tests for the hardening issue: one test per item, each failing on f69111d.

Every promise below was broken by the store as it was before the core rewrite (commit
f69111d): a cancelled caller, a racing delete, a slow reader, a second process. Each test names
its item; its docstring says what went wrong. Every wait is bounded (``asyncio.timeout``), so
a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    MessageNotFound,
    Role,
    SessionNotFound,
    Store,
    Text,
    ToolCall,
    WriteFailed,
    batch_written,
    open_store,
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
    """Every event a subscription still holds, once its store is closed (iteration ends)."""
    async with asyncio.timeout(WAIT):
        return [event async for event in sub]


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


# -- 1. a cancelled call never leaves a transaction open ------------------------------------------


async def test_item01_a_cancelled_write_never_leaves_the_database_locked(db_url: str) -> None:
    """Item 1: cancelling ``delete()``, ``create()``, ``sessions.save()`` or a terminal
    ``update()`` at a random point left (now and then) a SQLite connection inside ``BEGIN
    IMMEDIATE``: the next write waited out the 30 s busy timeout, and so did ``close()``."""
    rng = random.Random(20260101)
    store = await opened(db_url, debounce=0.01)
    try:
        session = await store.sessions.create("cancelled calls")
        for trial in range(80):
            async with bounded(f"a create after {trial} cancelled calls (database locked?)", 5):
                victim = await store.messages.create(session.id, role=Role.ASSISTANT)
            kind = trial % 4
            call: Awaitable[Any]
            if kind == 0:
                call = store.messages.delete(victim.id)
            elif kind == 1:
                call = store.messages.create(session.id, role=Role.USER, parts=[Text("c")])
            elif kind == 2:
                session.title = f"renamed {trial}"
                call = store.sessions.save(session)
            else:
                victim.append_text("done")
                victim.add_finish(FinishReason.END_TURN)
                call = store.messages.update(victim)
            await cancel_at_random(rng, call)
        async with bounded("a write after the cancelled calls (database locked?)", 5):
            after = await store.sessions.create("after the cancellations")
            await store.messages.create(after.id, role=Role.USER, parts=[Text("ok")])
        await assert_no_write_lock_held(db_url)
        await assert_counts_match_rows(store)
    finally:
        async with bounded("close()", 5):
            await store.close()
    await assert_no_write_lock_held(db_url)


# -- 2. one unstorable row never holds a group commit hostage -------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("is_summary_message", None), ("model", None), ("provider", 7), ("model", "nul\x00")],
)
async def test_item02_update_refuses_a_field_the_row_cannot_store(
    db_url: str, field: str, value: object
) -> None:
    """Item 2: ``update()`` accepted ``is_summary_message=None``; every later group commit then
    failed its NOT NULL constraint, with every other message of the batch."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("unstorable")
        bad, good = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"]
        setattr(bad, field, value)
        with pytest.raises(InvalidMessage, match=field):
            await store.messages.update(bad)
        good.append_text("written")
        await store.messages.update(good)
        async with bounded("flush_all"):
            await store.messages.flush_all()
        assert (await store.messages.get(good.id)).text == "written"
        assert store.messages.stats().write_failures == 0


async def refuse_writes_of(url: str, message_id: str) -> Callable[[], Awaitable[None]]:
    """Install a trigger that refuses every UPDATE of one message row; return its remover."""
    engine = create_async_engine(url)
    quoted = message_id.replace("'", "''")
    if url.startswith("sqlite"):
        install = [
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON messages "
            f"WHEN NEW.id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        ]
        remove = ["DROP TRIGGER refuse_one"]
    else:
        install = [
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.id = '{quoted}' THEN "
            "RAISE check_violation USING MESSAGE = 'refused by test'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON messages "
            "FOR EACH ROW EXECUTE FUNCTION refuse_one()",
        ]
        remove = ["DROP TRIGGER refuse_one ON messages", "DROP FUNCTION refuse_one()"]
    async with engine.begin() as conn:
        for statement in install:
            await conn.execute(text(statement))

    async def removed() -> None:
        async with engine.begin() as conn:
            for statement in remove:
                await conn.execute(text(statement))
        await engine.dispose()

    return removed


async def test_item02_a_refused_row_does_not_hold_the_batch_hostage(db_url: str) -> None:
    """Item 2: a failed batch must isolate the culprit: the other messages of the group commit
    are written and announced, the refused state stays buffered and its flush raises, and it is
    written once the database takes it again."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("hostage")
        culprit, *others = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(4)
        ]
        remove_trigger = await refuse_writes_of(db_url, culprit.id)
        async with store.messages.subscribe() as sub:
            for message in [culprit, *others]:
                message.append_text(f"text of {message.id}")
                await store.messages.update(message)
            async with bounded("flush_all"):
                with pytest.raises(WriteFailed):
                    await store.messages.flush_all()  # one group commit: the culprit fails
            for message in others:
                assert (await store.messages.get(message.id)).text == message.text
            assert (await store.messages.get(culprit.id)).text == ""
            async with bounded("flush of the refused message"):
                with pytest.raises(WriteFailed, match="refused by test"):
                    await store.messages.flush(culprit.id)
            assert store.messages.stats().pending_messages == 1
            async with bounded("the other messages' events"):
                seen: dict[str, str] = {}
                while any(seen.get(m.id) != m.text for m in others):
                    event = await sub.receive()
                    seen[event.payload.id] = event.payload.text
            assert culprit.id not in seen
            await remove_trigger()
            async with bounded("flush after the database takes the row again"):
                await store.messages.flush(culprit.id)
            assert (await store.messages.get(culprit.id)).text == culprit.text
