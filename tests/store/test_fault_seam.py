"""``messagestore.testing``: failing and stalling a store's next database jobs, both backends."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import pytest

from messagestore import Role, Store, StoreClosed, Text, WrongEventLoop, open_store
from messagestore.testing import (
    Failure,
    Stall,
    faults,
    feed_counter,
    feed_horizon,
    lease_state,
    prune_tombstones,
    set_must_deliver_timeout,
    sweeper_state,
    until_heartbeat,
)

WAIT = 10.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with open_store(db_url) as opened:
        yield opened


async def test_a_failed_write_is_rolled_back_and_raised(store: Store) -> None:
    failure = faults(store).fail_next(kind="write", error=OSError("disk I/O error"))
    assert isinstance(failure, Failure)
    with pytest.raises(OSError, match="disk I/O error"):
        await store.sessions.create("never stored")
    assert await store.sessions.list() == []  # the job ran, then rolled back
    assert failure.count == 1
    kept = await store.sessions.create("stored")  # the next write is not touched
    assert [s.id for s in await store.sessions.list()] == [kept.id]
    assert failure.count == 1


async def test_a_failed_write_takes_no_revision(store: Store) -> None:
    before = (await store.messages.snapshot()).revision
    faults(store).fail_next(error=OSError("commit failed"))
    with pytest.raises(OSError):
        await store.sessions.create("rolled back")
    session = await store.sessions.create("kept")
    assert session.revision == before + 1  # the rolled-back revision was never taken


async def test_failing_every_write_until_cleared(store: Store) -> None:
    session = await store.sessions.create("flaky")
    failing = faults(store).fail_next(
        kind="write", error=sqlite3.OperationalError("disk full"), times=None
    )
    for _ in range(3):
        with pytest.raises(sqlite3.OperationalError, match="disk full"):
            await store.messages.create(session.id, role=Role.USER, parts=[Text("x")])
    assert failing.count == 3
    assert await store.messages.list(session.id) == []  # reads are not touched
    failing.clear()
    created = await store.messages.create(session.id, role=Role.USER, parts=[Text("y")])
    assert [m.id for m in await store.messages.list(session.id)] == [created.id]
    assert failing.count == 3


async def test_times_counts_jobs_and_faults_queue_in_order(store: Store) -> None:
    plan = faults(store)
    first = plan.fail_next(error=OSError("first"), times=2)
    second = plan.fail_next(error=OSError("second"))
    for expected in ("first", "first", "second"):
        with pytest.raises(OSError, match=expected):
            await store.sessions.create("x")
    await store.sessions.create("ok")
    assert (first.count, second.count) == (2, 1)


async def test_a_failed_read(store: Store) -> None:
    session = await store.sessions.create("read")
    faults(store).fail_next(kind="read", error=OSError("read error"))
    with pytest.raises(OSError, match="read error"):
        await store.sessions.get(session.id)
    assert (await store.sessions.get(session.id)).id == session.id


async def test_a_stalled_write_waits_for_release(store: Store) -> None:
    session = await store.sessions.create("stall")
    stall = faults(store).stall_next(kind="write")
    assert isinstance(stall, Stall)
    created = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
    async with asyncio.timeout(WAIT):
        await stall.started()
    assert stall.held
    assert not created.done()
    stall.release()
    async with asyncio.timeout(WAIT):
        message = await created
    assert not stall.held
    assert [m.id for m in await store.messages.list(session.id)] == [message.id]


async def test_a_stalled_read_waits_for_release(store: Store) -> None:
    session = await store.sessions.create("stall read")
    stall = faults(store).stall_next(kind="read")
    read = asyncio.create_task(store.sessions.get(session.id))
    async with asyncio.timeout(WAIT):
        await stall.started()
    assert not read.done()
    stall.release()
    async with asyncio.timeout(WAIT):
        assert (await read).id == session.id


async def test_a_caller_cancelled_during_a_stalled_write_leaves_it_to_commit(store: Store) -> None:
    session = await store.sessions.create("cancel")
    stall = faults(store).stall_next()
    created = asyncio.create_task(
        store.messages.create(session.id, role=Role.USER, parts=[Text("kept")])
    )
    async with asyncio.timeout(WAIT):
        await stall.started()
    created.cancel()
    with pytest.raises(asyncio.CancelledError):
        await created
    stall.release()
    async with asyncio.timeout(WAIT):
        await store.sessions.create("after")  # write jobs run in order: it committed before
        stored = await store.messages.list(session.id)
    assert [m.text for m in stored] == ["kept"]


async def test_closing_the_store_releases_a_stall(db_url: str) -> None:
    async with asyncio.timeout(WAIT):
        store = await open_store(db_url)
        session = await store.sessions.create("closing")
        stall = faults(store).stall_next()
        created = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
        await stall.started()
        await store.close()  # does not hang on the held job: it goes on and commits
        assert (await created).session_id == session.id


async def test_started_ends_with_store_closed_if_no_job_came(db_url: str) -> None:
    store = await open_store(db_url)
    stall = faults(store).stall_next(kind="read")
    await store.close()
    with pytest.raises(StoreClosed):
        async with asyncio.timeout(WAIT):
            await stall.started()


async def test_clear_disarms_everything(store: Store) -> None:
    plan = faults(store)
    plan.fail_next(error=OSError("no"), times=None)
    stall = plan.stall_next(kind="read")
    plan.clear()
    session = await store.sessions.create("fine")
    async with asyncio.timeout(WAIT):
        assert (await store.sessions.get(session.id)).title == "fine"
    assert not stall.held


async def test_bad_arguments_are_refused(store: Store) -> None:
    plan = faults(store)
    with pytest.raises(ValueError, match="kind must be one of"):
        plan.fail_next(kind="delete", error=OSError())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Exception instance"):
        plan.fail_next(error=OSError)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        plan.fail_next(error=OSError(), times=0)
    with pytest.raises(TypeError, match="asyncio messagestore Store"):
        faults(object())  # type: ignore[arg-type]


async def test_the_plan_belongs_to_the_store_loop(store: Store) -> None:
    with pytest.raises(WrongEventLoop):
        await asyncio.to_thread(faults, store)
    assert faults(store) is faults(store)


async def test_the_inspection_seams_report_and_refuse_what_is_not_a_store(store: Store) -> None:
    """The seams besides faults: they take a store (``TypeError`` otherwise), read what the
    store's background work did, and ``until_heartbeat`` returns at once when its condition
    already holds."""
    lease = lease_state(store)
    assert lease is not None and lease.id == store.writer_id and lease.running
    assert await until_heartbeat(store, lambda state: state.heartbeats >= 0) == lease
    assert sweeper_state(store).running
    newest, compacted = await feed_counter(store)
    session = await store.sessions.create("counted")
    assert (await feed_counter(store))[0] > newest and compacted == 0
    await store.messages.delete((await store.messages.create(session.id, role=Role.USER)).id)
    assert await prune_tombstones(store) == 0  # within the retention period: kept
    assert feed_horizon(store) is None  # no feed subscription: the feed keeps no horizon
    async with store.messages.subscribe(since=0) as subscription:
        async with asyncio.timeout(10):
            await subscription.receive()  # the feed read the counter
        assert feed_horizon(store) == (await feed_counter(store))[0]
    for seam in (lease_state, sweeper_state, feed_horizon):
        with pytest.raises(TypeError, match="Store"):
            seam(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Store"):
        set_must_deliver_timeout(object(), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must_deliver_timeout"):
        set_must_deliver_timeout(store, 0)
    async with open_store(store.url, read_only=True) as looking:
        assert lease_state(looking) is None
