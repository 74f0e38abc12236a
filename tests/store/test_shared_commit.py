"""On PostgreSQL the writer runs on a thread of its own, and the write jobs queued while a
transaction was under way share the next one, each in a savepoint of its own: one job's error
rolls back that job alone, every committed job is announced before its caller resumes, a
cancelled caller's job still commits, and a job past its deadline is never committed.

A test stall on one write holds the writer while the jobs under test queue behind it;
``txid_current()`` in a job tells which transaction it ran in (a row's ``xmin`` would not:
rows written under a savepoint carry the subtransaction's id).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from messagestore import (
    BackgroundTaskFailed,
    DatabaseTimeout,
    FinishReason,
    Message,
    Role,
    Store,
    Tx,
    open_store,
)
from messagestore.testing import faults

pytestmark = pytest.mark.postgres

BOUND = 10.0  # generous: the machine is shared
JOB_TIMEOUT = 1.0  # long enough for the calls to queue behind the holder on a busy machine


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    async with open_store(postgres_url) as opened:
        yield opened


async def queued_behind_a_stall(
    store: Store, *calls: Callable[[], Awaitable[Any]]
) -> list[asyncio.Task[Any]]:
    """Start ``calls`` while the writer is held by a stalled write, let each reach the
    database's queue, then release the stall; return their tasks."""
    stall = faults(store).stall_next(kind="write")
    held = asyncio.ensure_future(store.sessions.create("held"))
    async with asyncio.timeout(BOUND):
        await stall.started()
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call()))
        await submitted()
    stall.release()
    async with asyncio.timeout(BOUND):
        await held
    return tasks


async def submitted() -> None:
    """Let the call just started submit its job (each does within a few steps of the loop),
    so the jobs queue in the order the calls were started."""
    for _ in range(20):
        await asyncio.sleep(0)


def txid(tx: Tx) -> int:
    return int(tx.conn.execute(text("SELECT txid_current()")).scalar_one())


async def test_jobs_queued_together_share_one_transaction(store: Store) -> None:
    tasks = await queued_behind_a_stall(store, *(lambda: store.transaction(txid) for _ in range(5)))
    async with asyncio.timeout(BOUND):
        txids = await asyncio.gather(*tasks)
    assert len(set(txids)) == 1, txids
    async with asyncio.timeout(BOUND):
        assert await store.transaction(txid) not in txids  # a job alone: a transaction alone


async def test_jobs_sharing_a_transaction_take_increasing_revisions(store: Store) -> None:
    """Each job of a shared transaction takes its revisions in queue order; one rolled back
    to its savepoint gives its revisions back to the next."""

    def take(tx: Tx) -> tuple[int, int]:
        tx.take_revisions(2)
        assert tx.revisions is not None
        return tx.revisions

    def take_and_fail(tx: Tx) -> None:
        tx.take_revisions(3)
        raise ValueError("rolled back to its savepoint")

    tasks = await queued_behind_a_stall(
        store,
        lambda: store.transaction(take),
        lambda: store.transaction(take_and_fail),
        lambda: store.transaction(take),
        lambda: store.transaction(take),
    )
    async with asyncio.timeout(BOUND):
        with pytest.raises(ValueError, match="savepoint"):
            await tasks[1]
        taken = [await tasks[0], await tasks[2], await tasks[3]]
    assert [last - first for first, last in taken] == [1, 1, 1]
    assert taken[1][0] == taken[0][1] + 1 and taken[2][0] == taken[1][1] + 1, taken


async def test_a_job_with_savepoints_of_its_own_shares_a_transaction(store: Store) -> None:
    """A job that isolates a failing statement in a savepoint of its own (as the group commit
    does with a row the database refuses) nests it inside the job's savepoint."""

    def isolates_a_failure(tx: Tx) -> int:
        try:
            with tx.conn.begin_nested():
                tx.conn.execute(text("SELECT 1 / 0"))
        except DBAPIError:
            pass
        return txid(tx)

    tasks = await queued_behind_a_stall(
        store,
        lambda: store.transaction(txid),
        lambda: store.transaction(isolates_a_failure),
        lambda: store.transaction(txid),
    )
    async with asyncio.timeout(BOUND):
        txids = await asyncio.gather(*tasks)
    assert len(set(txids)) == 1, txids


async def test_terminal_updates_arriving_together_commit_together_and_are_announced_first(
    store: Store,
) -> None:
    session = await store.sessions.create("s")
    messages = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(6)]
    sub = store.messages.subscribe()
    announced: dict[str, Message] = {}
    missing: list[str] = []

    def drain() -> None:
        while sub.pending:
            event = sub.receive_nowait()
            announced[event.payload.id] = event.payload

    async def finish(message: Message) -> None:
        message.append_text(f"the end of {message.id}")
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        drain()  # the commit was announced before update() returned
        seen = announced.get(message.id)
        if seen is None or not seen.is_finished:
            missing.append(message.id)

    # Jobs asking for their transaction's id on either side: a transaction takes a run of
    # the queue, so the same id on both sides means the updates shared it.
    tasks = await queued_behind_a_stall(
        store,
        lambda: store.transaction(txid),
        *(lambda m=m: finish(m) for m in messages),
        lambda: store.transaction(txid),
    )
    async with asyncio.timeout(BOUND):
        results = await asyncio.gather(*tasks)
    assert not missing
    assert results[0] == results[-1]
    for stored in await store.messages.list(session.id):
        assert stored.is_finished
    sub.close()


async def test_one_failing_job_in_a_shared_transaction_fails_only_its_caller(
    store: Store,
) -> None:
    def divide_by_zero(tx: Tx) -> None:
        tx.take_revisions(1)  # rolled back with the rest of the job
        tx.conn.execute(text("SELECT 1 / 0"))

    sub = store.sessions.subscribe()
    first, failing, last = await queued_behind_a_stall(
        store,
        lambda: store.sessions.create("first"),
        lambda: store.transaction(divide_by_zero),
        lambda: store.sessions.create("last"),
    )
    async with asyncio.timeout(BOUND):
        created = [await first, await last]
        with pytest.raises(DBAPIError, match="division by zero"):
            await failing
    titles = {s.title for s in await store.sessions.list()}
    assert titles == {"held", "first", "last"}
    titles_announced = []
    while sub.pending:
        titles_announced.append(sub.receive_nowait().payload.title)
    assert titles_announced == ["held", "first", "last"]  # in commit order, the failed one not
    assert {s.id for s in created} < {s.id for s in await store.sessions.list()}
    sub.close()


async def test_a_caller_cancelled_while_its_job_waits_in_a_shared_batch(store: Store) -> None:
    session = await store.sessions.create("s")
    messages = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(3)]
    sub = store.messages.subscribe()

    async def finish(message: Message) -> None:
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)

    stall = faults(store).stall_next(kind="write")
    held = asyncio.ensure_future(store.sessions.create("held"))
    async with asyncio.timeout(BOUND):
        await stall.started()
    tasks = []
    for message in messages:
        tasks.append(asyncio.ensure_future(finish(message)))
        await submitted()
    tasks[1].cancel()  # its job is queued: it still runs, commits and is announced
    stall.release()
    async with asyncio.timeout(BOUND):
        await held
        await tasks[0]
        await tasks[2]
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        finished = set()
        while len(finished) < 3:
            event = await sub.receive()
            if event.payload.is_finished:
                finished.add(event.payload.id)
    assert finished == {m.id for m in messages}
    assert all(m.is_finished for m in await store.messages.list(session.id))
    sub.close()


async def test_a_job_past_its_deadline_in_a_shared_batch_is_never_committed(
    postgres_url: str,
) -> None:
    """A job stalled inside a shared transaction is cut off at its deadline: what ran before
    it in that transaction is rolled back with it (its callers are told nothing was stored),
    what had not started runs in the next transaction (unless its own deadline passed too)."""
    async with open_store(postgres_url, job_timeout=JOB_TIMEOUT) as store:
        plan = faults(store)
        holder = plan.stall_next(kind="write")
        held = asyncio.ensure_future(store.sessions.create("held"))
        async with asyncio.timeout(BOUND):
            await holder.started()
        before = asyncio.ensure_future(store.sessions.create("before"))
        await submitted()
        plan.stall_next(kind="write")  # taken by the next job: it hangs in the batch
        stalled = asyncio.ensure_future(store.sessions.create("stalled"))
        await submitted()
        after = asyncio.ensure_future(store.sessions.create("after"))
        await submitted()
        holder.release()
        told: dict[str, bool] = {}
        for title, task in (("held", held), ("before", before), ("stalled", stalled)):
            told[title] = await stored(task)
        told["after"] = await stored(after)  # ran again unless its deadline passed meanwhile
        assert told["before"] is False  # it ran in the transaction the deadline cut off
        assert told["stalled"] is False
        titles = {s.title for s in await store.sessions.list()}
        assert titles == {title for title, stored in told.items() if stored}
        async with asyncio.timeout(BOUND):
            await store.sessions.create("later")  # the writer goes on


async def stored(task: Awaitable[object]) -> bool:
    """Await ``task``: True if it returned, False if it was told nothing was stored."""
    async with asyncio.timeout(BOUND):
        try:
            await task
        except DatabaseTimeout as timeout:
            if timeout.stored is not False:
                raise
            return False
    return True


async def writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "ms-pg-writer"]


async def test_the_writer_thread_ends_with_the_store(postgres_url: str) -> None:
    before = len(await writer_threads())
    async with open_store(postgres_url) as store:
        assert len(await writer_threads()) == before + 1
        await store.sessions.create("s")
    assert len(await writer_threads()) == before


async def test_a_dead_writer_thread_refuses_writes_and_is_gone_after_close(
    postgres_url: str,
) -> None:
    before = len(await writer_threads())
    store = await open_store(postgres_url)
    try:
        await store.sessions.create("s")
        faults(store).crash_next(kind="write", error=RuntimeError("writer thread bug"))
        async with asyncio.timeout(BOUND):
            with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
                await store.sessions.create("dies")
            with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
                await store.sessions.create("refused")
    finally:
        async with asyncio.timeout(BOUND):
            with contextlib.suppress(BackgroundTaskFailed):
                await store.close()
    assert len(await writer_threads()) == before
