"""``open_store(url, read_only=True)``: a store for tools that only look, on both backends.

It reads, snapshots and follows the change feed like any store; it never migrates (a schema
that is not the newest is refused with ``SchemaTooOld`` or ``SchemaTooNew``), never creates an
SQLite file, takes no writer lease, runs no recovery, and refuses every write with
``StoreReadOnly`` — nothing buffered, nothing written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    FinishReason,
    Role,
    SchemaTooNew,
    SchemaTooOld,
    StoreReadOnly,
    migrations,
    open_store,
)
from messagestore.dispatch import Dispatcher, Turn
from pubsub import EventType

WAIT = 30.0  # seconds: the bound of every wait here


async def _scalar(url: str, query: str) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(query))).scalar_one()
    finally:
        await engine.dispose()


async def _set_version(url: str, version: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": version})
    finally:
        await engine.dispose()


async def test_reads_what_another_store_wrote_without_lease_or_recovery(db_url: str) -> None:
    async with open_store(db_url) as writer:
        session = await writer.sessions.create("chat")
        reply = await writer.messages.create(session.id, role=Role.ASSISTANT)
        reply.append_text("half a reply")
        await writer.messages.update(reply)
    # The writer closed with the reply unfinished: its lease ended, so a read-write store
    # would repair the reply on open. A read-only one shows it as stored.
    leases = await _scalar(db_url, "SELECT count(*) FROM writers")
    async with open_store(db_url, read_only=True) as looker:
        assert looker.writer_id is None
        assert [s.id for s in await looker.sessions.list()] == [session.id]
        assert (await looker.sessions.get(session.id)).message_count == 1
        [stored] = await looker.messages.list(session.id)
        assert stored.text == "half a reply"
        assert not stored.is_finished
        assert (await looker.messages.get(reply.id)).text == "half a reply"
        snapshot = await looker.messages.snapshot(session.id)
        assert [m.id for m in snapshot.messages] == [reply.id]
        assert snapshot.revision >= stored.revision
    assert await _scalar(db_url, "SELECT count(*) FROM writers") == leases  # no lease taken
    async with open_store(db_url) as repairer:
        repaired = await repairer.messages.get(reply.id)
        assert repaired.finish is not None
        assert repaired.finish.reason is FinishReason.INTERRUPTED  # recovery was due


async def test_every_write_is_refused_and_nothing_changes(db_url: str) -> None:
    async with open_store(db_url) as writer:
        session = await writer.sessions.create("chat")
        message = await writer.messages.create(session.id, role=Role.USER)
    async with open_store(db_url, read_only=True) as looker:
        stored = await looker.messages.get(message.id)
        stored.append_text("never written")
        kept = await looker.sessions.get(session.id)
        kept.title = "renamed"
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "SessionService.create()": lambda: looker.sessions.create("new"),
            "SessionService.save()": lambda: looker.sessions.save(kept),
            "SessionService.delete()": lambda: looker.sessions.delete(session.id),
            "MessageService.create()": lambda: looker.messages.create(session.id, role="user"),
            "MessageService.update()": lambda: looker.messages.update(stored),
            "MessageService.delete()": lambda: looker.messages.delete(message.id),
            "MessageService.delete_session_messages()": lambda: (
                looker.messages.delete_session_messages(session.id)
            ),
            "Store.recover()": looker.recover,
        }
        for call, write in calls.items():
            with pytest.raises(StoreReadOnly, match="read-only") as raised:
                await write()
            assert raised.value.call == call
        await looker.messages.flush_all()  # nothing was buffered
        assert looker.messages.stats().buffered_messages == 0

        async def run_turn(turn: Turn) -> None:
            raise AssertionError("no turn runs on a read-only store")

        # Whatever reaches the database to write is refused at its door too.
        with pytest.raises(StoreReadOnly, match="writes are refused"):
            await Dispatcher(looker, run_turn).submit(session.id, "hello")
    async with open_store(db_url) as writer:
        assert [s.title for s in await writer.sessions.list()] == ["chat"]
        [unchanged] = await writer.messages.list(session.id)
        assert unchanged.text == "" and unchanged.id == message.id


async def test_follows_what_other_stores_commit(db_url: str) -> None:
    async with open_store(db_url) as writer, open_store(db_url, read_only=True) as looker:
        session = await writer.sessions.create("chat")
        # List, then watch from the snapshot's revision: "from now" (since=None) is only as
        # exact as the moment the feed first reads the counter, which races another store.
        since = (await looker.messages.snapshot(session.id)).revision
        sub = looker.messages.subscribe(session_id=session.id, since=since)
        message = await writer.messages.create(session.id, role=Role.USER)
        async with asyncio.timeout(WAIT):
            event = await sub.receive()
        assert (event.type, event.payload.id) == (EventType.CREATED, message.id)
        sub.close()


async def test_an_older_schema_is_refused_and_left_as_it_is(db_url: str) -> None:
    older = migrations.history()[1].revision  # the one before the newest
    async with open_store(db_url):
        pass
    await _set_version(db_url, older)
    with pytest.raises(SchemaTooOld, match=r"older than this .*messagestore db upgrade"):
        await open_store(db_url, read_only=True)
    assert await migrations.current(db_url) == (older,)


async def test_a_newer_schema_is_refused(db_url: str) -> None:
    async with open_store(db_url):
        pass
    await _set_version(db_url, "from_the_future")
    with pytest.raises(SchemaTooNew, match="from_the_future"):
        await open_store(db_url, read_only=True)


async def test_an_empty_database_is_refused_and_left_empty(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        sqlite3.connect(db_url.removeprefix("sqlite+aiosqlite:///")).close()  # an empty file
    with pytest.raises(SchemaTooOld, match=r"no messagestore schema in .*messagestore db upgrade"):
        await open_store(db_url, read_only=True)
    assert await migrations.current(db_url) == ()


async def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "store.db"
    with pytest.raises(FileNotFoundError, match=r"no database at .*store\.db"):
        await open_store(f"sqlite+aiosqlite:///{path}", read_only=True)
    assert not path.parent.exists()


def test_the_blocking_twin_opens_read_only(sqlite_url: str) -> None:
    from messagestore.sync import open_store as open_blocking

    with open_blocking(sqlite_url) as writer:
        writer.sessions.create("chat")
    with open_blocking(sqlite_url, read_only=True) as looker:
        assert [s.title for s in looker.sessions.list()] == ["chat"]
        with pytest.raises(StoreReadOnly):
            looker.sessions.create("new")


def test_read_only_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="read_only must be True or False"):
        open_store(read_only="yes")  # type: ignore[arg-type]
