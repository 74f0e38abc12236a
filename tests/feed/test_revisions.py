"""Revisions: every committed change takes one in its own transaction, they are unique, and they
follow commit order across connections and stores.

The PostgreSQL proof works on raw connections with the counter statement the store uses
(``_revisions``): a transaction that took a revision makes the next one wait, so a reader that
has seen revision n never later finds a smaller one committed. The same test shows that a
plain sequence (``nextval()``, handed out in call order) breaks exactly that.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from messagestore import FinishReason, Role, Session, Text, ToolCall, open_store
from messagestore._database import _session_jobs as session_jobs
from messagestore._database._engine import create_engine
from messagestore._database._tx import Tx
from pubsub import EventType
from tests.support.feed_helpers import WAIT, Ledger, database_truth, follow

# -- every change takes a revision ------------------------------------------------------------


async def test_every_change_takes_the_next_revision_in_its_own_commit(db_url: str) -> None:
    async with open_store(db_url, debounce=0.01) as store:
        seen: list[tuple[str, int]] = []
        session = await store.sessions.create("revisions")
        seen.append(("session created", session.revision))
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        seen.append(("message created", message.revision))
        assert (await store.sessions.get(session.id)).revision == message.revision + 1  # count
        message.append_text("streamed")
        await store.messages.update(message)
        await store.messages.flush(message.id)
        stored = await store.messages.get(message.id)
        seen.append(("message written", stored.revision))
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)  # terminal: written before it returns
        finished = await store.messages.get(message.id)
        seen.append(("message finished", finished.revision))
        session.title = "renamed"
        saved = await store.sessions.save(session)
        seen.append(("session saved", saved.revision))
        assert (await store.sessions.get(session.id)).revision == saved.revision
        await store.messages.delete(message.id)
        seen.append(("message deleted", (await database_truth(db_url)).deleted[message.id]))
        await store.sessions.delete(session.id)
        replay = store.sessions.subscribe(since=saved.revision)
        async with asyncio.timeout(WAIT):
            deleted = await replay.receive()
        replay.close()
        assert (deleted.type, deleted.payload.id) == (EventType.DELETED, session.id)
        seen.append(("session deleted", deleted.payload.revision))

        revisions = [revision for _, revision in seen]
        assert revisions == sorted(set(revisions)), seen  # unique, in commit order
        assert revisions[0] > 0
        assert revisions[-1] == (await database_truth(db_url)).counter


async def test_concurrent_stores_take_unique_revisions(db_url: str) -> None:
    """Two stores on one database (as two processes would be) write at once: no revision is
    taken twice, and the counter accounts for every one."""
    async with open_store(db_url) as a, open_store(db_url) as b:
        session = await a.sessions.create("both")

        async def write(store: Any, n: int) -> list[int]:
            taken = []
            for i in range(n):
                message = await store.messages.create(session.id, role=Role.USER)
                taken += [message.revision, message.revision + 1]  # the message, the count
                message.parts = [Text(f"edit {i}")]
                await store.messages.update(message)
            return taken

        first, second = await asyncio.gather(write(a, 40), write(b, 40))
        await a.messages.flush_all()
        await b.messages.flush_all()
        assert set(first).isdisjoint(second)
        stored = [m.revision for m in await a.messages.list(session.id)]
        assert len(set(stored)) == len(stored) == 80
        assert set(stored).isdisjoint(first + second)  # each edit took a revision of its own
        assert max(stored) <= (await database_truth(db_url)).counter


async def test_a_recovery_repair_takes_a_revision_and_is_announced(db_url: str) -> None:
    """A store closes with a message mid-stream; the next store to open repairs it. The repair
    is a change like any other: a new revision, seen by a subscriber in a third store (which
    learns of it from the database) and by a replay from before it."""
    async with open_store(db_url) as watcher:
        async with open_store(db_url) as dying:
            session = await dying.sessions.create("crash")
            message = await dying.messages.create(session.id, role=Role.ASSISTANT)
            message.append_text("half")
            message.add_tool_call(ToolCall("call-1", "run", "{}"))
            await dying.messages.update(message)
            before = (await dying.messages.get(message.id)).revision
        sub = watcher.messages.subscribe(session_id=session.id, since=before)
        async with open_store(db_url) as repairer:  # recovery runs on open
            repaired = await repairer.messages.get(message.id)
            tool = (await repairer.messages.list(session.id))[-1]
        assert repaired.finish is not None and repaired.finish.reason is FinishReason.INTERRUPTED
        assert repaired.revision > before
        assert tool.role is Role.TOOL and tool.revision > before
        ledger = Ledger()
        await follow(sub, ledger, until=max(repaired.revision, tool.revision))
        assert ledger.last[message.id].revision == repaired.revision
        assert ledger.last[message.id] == repaired
        assert ledger.last[tool.id] == tool
        sub.close()
        replay = watcher.messages.subscribe(session_id=session.id, since=before)
        async with asyncio.timeout(WAIT):
            events = [await replay.receive() for _ in range(2)]
        replay.close()
        assert {(e.type, e.payload.id, e.payload.revision) for e in events} == {
            (EventType.UPDATED, message.id, repaired.revision),
            (EventType.CREATED, tool.id, tool.revision),
        }


# -- commit order -----------------------------------------------------------------------------


def _in_commit_order(observations: list[set[int]]) -> bool:
    """True if no reader observation ever finds a revision below one an earlier observation
    already saw (what a subscriber resuming from "the newest I saw" relies on)."""
    seen: set[int] = set()
    for observed in observations:
        new = observed - seen
        if seen and new and min(new) < max(seen):
            return False
        seen |= observed
    return True


async def _backend_pid(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _wait_until_blocked(reader: AsyncConnection, pid: int) -> None:
    """Until ``pid`` waits for a lock (bounded): ``pg_stat_activity`` says so."""
    async with asyncio.timeout(WAIT):
        while True:
            event = (
                await reader.execute(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                )
            ).scalar_one_or_none()
            await reader.rollback()  # pg_stat_activity is a snapshot per transaction
            if event == "Lock":
                return
            await asyncio.sleep(0.01)


async def _sessions_seen(reader: AsyncConnection) -> set[int]:
    rows = await reader.execute(text("SELECT revision FROM sessions WHERE title LIKE 'order-%'"))
    await reader.rollback()
    return set(rows.scalars())


async def test_postgres_revisions_follow_commit_order_not_call_order(postgres_url: str) -> None:
    """T1 takes a revision and stays open; T2 tries to take one and waits until T1 commits;
    T2's is greater; a reader never sees a smaller revision appear after a greater one. The
    same interleaving with ``nextval()`` lets T2 commit first, and the reader then sees T1's
    smaller revision appear after T2's."""
    async with open_store(postgres_url):
        pass  # the schema and the counter
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as t1, engine.connect() as t2, engine.connect() as reader:
            # -- the counter (what every write job of the store runs first) --
            pid2 = await _backend_pid(t2)
            slow, fast = Session("order-slow", "order-slow"), Session("order-fast", "order-fast")
            observations = [await _sessions_seen(reader)]
            await t1.run_sync(lambda c: session_jobs.create_session(Tx(c, writer_id="t1"), slow))
            second = asyncio.create_task(
                t2.run_sync(lambda c: session_jobs.create_session(Tx(c, writer_id="t2"), fast))
            )
            await _wait_until_blocked(reader, pid2)
            assert not second.done()  # T2 cannot take a revision while T1 holds the counter
            observations.append(await _sessions_seen(reader))
            await t1.commit()
            async with asyncio.timeout(WAIT):
                await second
            assert fast.revision == slow.revision + 1  # T2 numbered after T1 committed
            observations.append(await _sessions_seen(reader))
            await t2.commit()
            observations.append(await _sessions_seen(reader))
            assert observations[-1] == {slow.revision, fast.revision}
            assert _in_commit_order(observations), observations

            # -- a plain sequence: revisions in call order --
            await t1.execute(
                text("CREATE TABLE nextval_order (revision BIGSERIAL PRIMARY KEY, who TEXT)")
            )
            await t1.commit()
            insert = text("INSERT INTO nextval_order (who) VALUES (:who) RETURNING revision")
            seen = text("SELECT revision FROM nextval_order")

            async def sequence_seen() -> set[int]:
                rows = set((await reader.execute(seen)).scalars())
                await reader.rollback()
                return rows

            plain = [await sequence_seen()]
            s1 = (await t1.execute(insert, {"who": "slow"})).scalar_one()  # T1 stays open
            async with asyncio.timeout(WAIT):  # T2 does not wait for T1
                s2 = (await t2.execute(insert, {"who": "fast"})).scalar_one()
                await t2.commit()
            plain.append(await sequence_seen())
            await t1.commit()
            plain.append(await sequence_seen())
            assert s1 < s2
            assert plain == [set(), {s2}, {s1, s2}]  # s1 appeared after the reader saw s2
            assert not _in_commit_order(plain)
    finally:
        await engine.dispose()


async def test_sqlite_a_second_writer_cannot_take_a_revision_while_one_is_open(
    sqlite_url: str,
) -> None:
    """On SQLite every write transaction begins with ``BEGIN IMMEDIATE``: while T1 holds a
    revision no other connection (in any process) can even begin a write, so commit order is
    revision order by construction."""
    async with open_store(sqlite_url):
        pass
    engine = create_engine(sqlite_url)  # the store's engine: writes begin IMMEDIATE
    t2 = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), timeout=0)
    t2.isolation_level = None
    try:
        async with engine.connect() as t1:
            await t1.begin()
            first = await t1.run_sync(lambda conn: Tx(conn, writer_id="t1").take_revisions(1))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                t2.execute("BEGIN IMMEDIATE")
            await t1.commit()
        t2.execute("BEGIN IMMEDIATE")
        t2.execute("UPDATE feed_state SET revision = revision + 1")
        second = t2.execute("SELECT revision FROM feed_state").fetchone()[0]
        t2.execute("COMMIT")
        assert second == first + 1
    finally:
        t2.close()
        await engine.dispose()
