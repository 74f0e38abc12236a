"""``Store.transaction()``: a job of your own, in the store's write order, and the messages it
creates with ``store.messages.create_in`` announced when (and only if) it commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    Role,
    SessionNotFound,
    Store,
    StoreClosed,
    Text,
    Tx,
    WrongEventLoop,
    open_store,
)
from messagestore._database._schema import messages as messages_table
from messagestore.testing import faults
from pubsub import EventType

WAIT = 10.0


def _count_messages(tx: Tx) -> int:
    return int(tx.conn.execute(select(func.count()).select_from(messages_table)).scalar_one())


async def test_a_message_created_in_a_transaction_is_stored_and_announced_on_commit(
    store: Store,
) -> None:
    session = await store.sessions.create("tx")
    sub = store.messages.subscribe(session_id=session.id)
    seen: dict[str, Any] = {}

    def job(tx: Tx) -> Message:
        seen.update(writer=tx.writer_id, read_only=tx.read_only, cache=tx.stream_cache)
        message = store.messages.create_in(
            tx, session.id, role=Role.USER, parts=[Text("hello")], model="m"
        )
        seen["counted"] = _count_messages(tx)  # the job sees its own insert
        return message

    created = await store.transaction(job)
    assert seen == {"writer": store.writer_id, "read_only": False, "cache": None, "counted": 1}
    async with asyncio.timeout(WAIT):
        event = await sub.receive()
    assert (event.type, event.payload.id, event.payload.text) == (
        EventType.CREATED,
        created.id,
        "hello",
    )
    assert event.payload.revision == created.revision > 0
    assert await store.messages.get(created.id) == created
    assert (await store.sessions.get(session.id)).message_count == 1
    sub.close()


async def test_a_transaction_that_raises_rolls_back_and_announces_nothing(store: Store) -> None:
    session = await store.sessions.create("rollback")
    before = await store.messages.snapshot()
    sub = store.messages.subscribe(session_id=session.id)

    def job(tx: Tx) -> None:
        store.messages.create_in(tx, session.id, role=Role.USER, parts=[Text("never")])
        raise LookupError("changed my mind")

    with pytest.raises(LookupError, match="changed my mind"):
        await store.transaction(job)
    for bad in (
        lambda tx: store.messages.create_in(tx, session.id, role="nobody"),
        lambda tx: store.messages.create_in(tx, session.id, role=Role.USER, model="\x00"),
    ):
        with pytest.raises(InvalidMessage):
            await store.transaction(bad)
    with pytest.raises(SessionNotFound):
        await store.transaction(lambda tx: store.messages.create_in(tx, "nope", role=Role.USER))
    after = await store.messages.snapshot()
    assert (after.revision, after.messages) == (before.revision, before.messages)
    later = await store.messages.create(session.id, role=Role.USER, parts=[Text("later")])
    async with asyncio.timeout(WAIT):
        event = await sub.receive()  # the first event is the later message's: none before it
    assert event.payload.id == later.id
    sub.close()


async def test_transactions_run_in_the_store_write_order(store: Store) -> None:
    session = await store.sessions.create("order")
    sub = store.messages.subscribe(session_id=session.id)
    first = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
    middle = asyncio.create_task(
        store.transaction(lambda tx: store.messages.create_in(tx, session.id, role=Role.USER))
    )
    last = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
    async with asyncio.timeout(WAIT):
        made = [await first, await middle, await last]
        events = [await sub.receive() for _ in made]
    assert [m.revision for m in made] == sorted(m.revision for m in made)
    assert [e.payload.id for e in events] == [m.id for m in made]
    sub.close()


async def test_the_store_knows_a_message_created_in_a_transaction(store: Store) -> None:
    """As after ``create``: ``update()`` refuses at once a change to what a stored message
    keeps for life, and streams the rest."""
    session = await store.sessions.create("known")
    reply = await store.transaction(
        lambda tx: store.messages.create_in(tx, session.id, role=Role.ASSISTANT)
    )
    changed = reply.clone()
    changed.role = Role.USER
    with pytest.raises(InvalidMessage, match="role"):
        await store.messages.update(changed)
    reply.append_text("streamed")
    reply.add_finish(FinishReason.END_TURN)
    await store.messages.update(reply)
    stored = await store.messages.get(reply.id)
    assert (stored.role, stored.text, stored.is_finished) == (Role.ASSISTANT, "streamed", True)


async def test_a_read_only_transaction_reads_one_snapshot_and_writes_nothing(
    store: Store,
) -> None:
    session = await store.sessions.create("read")
    await store.messages.create(session.id, role=Role.USER)

    def read(tx: Tx) -> tuple[bool, int]:
        return tx.read_only, _count_messages(tx)

    assert await store.transaction(read, write=False) == (True, 1)
    with pytest.raises(RuntimeError, match="read-only"):
        await store.transaction(
            lambda tx: store.messages.create_in(tx, session.id, role=Role.USER), write=False
        )
    assert len(await store.messages.list(session.id)) == 1


async def test_a_cancelled_caller_only_stops_waiting(store: Store) -> None:
    session = await store.sessions.create("cancelled")
    sub = store.messages.subscribe(session_id=session.id)
    made: list[Message] = []

    def job(tx: Tx) -> None:
        made.append(store.messages.create_in(tx, session.id, role=Role.USER))

    stall = faults(store).stall_next(kind="write")
    waiting = asyncio.create_task(store.transaction(job))
    async with asyncio.timeout(WAIT):
        await stall.started()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    stall.release()
    async with asyncio.timeout(WAIT):
        event = await sub.receive()  # committed and announced all the same
    assert event.payload.id == made[0].id
    assert (await store.messages.get(made[0].id)).id == made[0].id
    sub.close()


async def test_a_closed_store_and_another_loop_are_refused(db_url: str) -> None:
    async with open_store(db_url) as store:
        session = await store.sessions.create("refused")
        before = await store.messages.snapshot()
        caught: list[BaseException] = []

        def job(tx: Tx) -> None:
            store.messages.create_in(tx, session.id, role=Role.USER)

        def elsewhere() -> None:
            try:
                asyncio.run(store.transaction(job))
            except BaseException as exc:
                caught.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.to_thread(thread.join, WAIT)
        assert len(caught) == 1 and isinstance(caught[0], WrongEventLoop), caught
        assert caught[0].call == "Store.transaction()"
        assert (await store.messages.snapshot()).revision == before.revision
    with pytest.raises(StoreClosed):
        await store.transaction(job)
    with pytest.raises(StoreClosed):
        await store.transaction(_count_messages, write=False)


async def test_sqlite_writes_begin_immediate_and_reads_run_beside_them(sqlite_url: str) -> None:
    """The store's write transactions take SQLite's write lock as they begin (before their
    first statement), and its reads begin deferred, so they run while a write holds it."""
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("locks")
        stall = faults(store).stall_next(kind="write")
        writing = asyncio.create_task(
            store.transaction(lambda tx: store.messages.create_in(tx, session.id, role=Role.USER))
        )
        async with asyncio.timeout(WAIT):
            await stall.started()  # begun, nothing executed yet
        outside = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), timeout=0)
        outside.isolation_level = None
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                outside.execute("BEGIN IMMEDIATE")
            async with asyncio.timeout(WAIT):  # the busy timeout (30 s) would exceed this
                assert await store.messages.list(session.id) == []
                assert await store.transaction(_count_messages, write=False) == 0
        finally:
            outside.close()
            stall.release()
        async with asyncio.timeout(WAIT):
            created = await writing
        assert [m.id for m in await store.messages.list(session.id)] == [created.id]
