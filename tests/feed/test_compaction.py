"""Tombstones and compaction on SQLite and PostgreSQL: a deleted message or session leaves a
tombstone for the retention period (default 7 days), pruned in the background; a ``since`` older
than what is retained raises ``RevisionCompacted`` from the subscription, and the client starts
again from ``snapshot()``.

Tombstones are aged by moving their ``deleted_at`` back, not by waiting or freezing clocks.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from messagestore import RevisionCompacted, Role, Store, open_store
from messagestore._database._schema import feed_state, tombstones
from messagestore._feed._retention import DEFAULT_RETENTION
from messagestore._model import utc_now
from messagestore.testing import prune_tombstones
from pubsub import EventType
from tests.support.feed_helpers import WAIT, Ledger, database_truth, follow


async def _age(store: Store, revisions: list[int], by: timedelta) -> None:
    """Move these tombstones' deletion time ``by`` into the past."""
    async with store.engine.begin() as conn:
        await conn.execute(
            update(tombstones)
            .where(tombstones.c.revision.in_(revisions))
            .values(deleted_at=utc_now() - by)
        )


async def _tombstones(store: Store) -> list[int]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(select(tombstones.c.revision).order_by(tombstones.c.revision))
        return list(rows.scalars())


async def _compacted(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(feed_state.c.compacted_revision))).scalar_one())


async def _deleted_messages(store: Store, count: int) -> tuple[str, list[int]]:
    """A session with ``count`` deleted messages (and one kept); their tombstone revisions."""
    session = await store.sessions.create("compaction")
    for _ in range(count):
        message = await store.messages.create(session.id, role=Role.USER)
        await store.messages.delete(message.id)
    await store.messages.create(session.id, role=Role.USER)
    return session.id, await _tombstones(store)


async def test_an_expired_cursor_raises_revision_compacted(db_url: str) -> None:
    async with open_store(db_url) as store:
        session_id, stones = await _deleted_messages(store, 4)
        old, kept = stones[:2], stones[2:]
        await _age(store, old, DEFAULT_RETENTION + timedelta(hours=1))
        assert await prune_tombstones(store) == 2
        assert await _tombstones(store) == kept
        compacted = await _compacted(store)
        assert compacted == old[-1]

        for since in (0, compacted - 1):
            for sub in (
                store.messages.subscribe(since=since),
                store.messages.subscribe(since=since, session_id=session_id),
                store.sessions.subscribe(since=since),
            ):
                async with asyncio.timeout(WAIT):
                    with pytest.raises(RevisionCompacted) as raised:
                        await sub.receive()
                assert (raised.value.since, raised.value.compacted) == (since, compacted)
                assert "start again from a snapshot" in str(raised.value)
                sub.close()

        # From the compacted revision on, everything is still told: the kept tombstones.
        sub = store.messages.subscribe(since=compacted, session_id=session_id)
        ledger = Ledger()
        truth = await database_truth(db_url, session_id)
        await follow(sub, ledger, until=max(truth.stored.values()))
        deleted = [r.revision for r in ledger.received if r.type is EventType.DELETED]
        assert deleted == kept
        sub.close()


async def test_a_replay_overtaken_by_compaction_raises_and_restarts_from_a_snapshot(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tombstones are pruned while a subscription is between two replay pages: its next page
    raises ``RevisionCompacted``; list-then-watch from a snapshot takes over."""
    monkeypatch.setattr("messagestore._feed._subscription._PAGE", 2)
    async with open_store(db_url) as store:
        session_id, stones = await _deleted_messages(store, 5)
        sub = store.messages.subscribe(since=0, session_id=session_id)
        async with asyncio.timeout(WAIT):
            first = await sub.receive()
            await sub.receive()  # the first page is delivered
        assert first.type is EventType.DELETED
        await _age(store, stones, DEFAULT_RETENTION * 2)
        assert await prune_tombstones(store) == len(stones)
        async with asyncio.timeout(WAIT):
            with pytest.raises(RevisionCompacted):
                await sub.receive()
        sub.close()

        snap = await store.messages.snapshot(session_id)
        assert len(snap.messages) == 1
        watch = store.messages.subscribe(since=snap.revision, session_id=session_id)
        added = await store.messages.create(session_id, role=Role.USER)
        async with asyncio.timeout(WAIT):
            event = await watch.receive()
        assert (event.type, event.payload.id) == (EventType.CREATED, added.id)
        watch.close()


async def test_tombstones_within_retention_are_kept(db_url: str) -> None:
    async with open_store(db_url) as store:
        _session_id, stones = await _deleted_messages(store, 2)
        await _age(store, stones, DEFAULT_RETENTION - timedelta(hours=1))
        assert await prune_tombstones(store) == 0
        assert await _tombstones(store) == stones
        assert await _compacted(store) == 0
    assert timedelta(days=7) == DEFAULT_RETENTION


async def test_tombstones_are_pruned_in_the_background(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``feed_retention=60`` (seconds) and the pruner's period shortened, tombstones older
    than a minute disappear while the store runs, without any call; newer ones stay."""
    monkeypatch.setattr("messagestore._feed._retention.PRUNE_EVERY", 0.05)
    async with open_store(db_url, feed_retention=60) as store:
        session = await store.sessions.create("background")
        messages = [await store.messages.create(session.id, role=Role.USER) for _ in range(3)]
        for message in messages:
            await store.messages.delete(message.id)
        stones = await _tombstones(store)
        passes: asyncio.Queue[int] = asyncio.Queue()
        prune = store._retention.prune

        async def observed() -> int:
            pruned = await prune()
            passes.put_nowait(pruned)
            return pruned

        store._retention.prune = observed  # type: ignore[method-assign]
        await _age(store, stones[:2], timedelta(minutes=2))
        while not passes.empty():  # passes that ended before the aging
            passes.get_nowait()
        async with asyncio.timeout(WAIT):
            await passes.get()  # a pass that may have started before the aging
            await passes.get()  # one that started after it
        assert await _tombstones(store) == stones[2:]
        assert await _compacted(store) == stones[1]
        assert store._retention.pruned == 2


async def test_a_session_tombstone_is_pruned_like_a_message_one(db_url: str) -> None:
    async with open_store(db_url) as store:
        session = await store.sessions.create("gone")
        await store.messages.create(session.id, role=Role.USER)
        await store.sessions.delete(session.id)
        stones = await _tombstones(store)
        assert len(stones) == 2  # the message, then the session
        await _age(store, stones, DEFAULT_RETENTION * 2)
        assert await prune_tombstones(store) == 2
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(tombstones))).scalar() == 0
        sub = store.sessions.subscribe(since=stones[0])
        async with asyncio.timeout(WAIT):
            with pytest.raises(RevisionCompacted):
                await sub.receive()
        sub.close()


@pytest.mark.parametrize("retention", [0, -5, "7 days", float("nan"), True])
async def test_bad_retention_is_refused(sqlite_url: str, retention: object) -> None:
    with pytest.raises(ValueError, match="feed_retention"):
        await open_store(sqlite_url, feed_retention=retention)  # type: ignore[arg-type]
