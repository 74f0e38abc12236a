"""Every database job has a deadline (``open_store(..., job_timeout=...)``), on SQLite and
PostgreSQL: a job that stalls — a test's stall, a lock another connection holds, a commit the
server does not confirm — raises ``DatabaseTimeout`` in its caller within the deadline, is
rolled back (never committed later, never announced), and the store goes on working.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

import messagestore
import messagestore.sync
from messagestore import (
    DatabaseTimeout,
    MessageStoreError,
    Role,
    Store,
    Tx,
    open_store,
)
from messagestore._changes import Kind
from messagestore.testing import faults

JOB_TIMEOUT = 0.4
BOUND = 5.0  # generous: the deadline is JOB_TIMEOUT, the machine is shared


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with open_store(db_url, debounce=0, job_timeout=JOB_TIMEOUT) as opened:
        yield opened


async def timed(awaitable: object) -> tuple[BaseException | None, float]:
    """Await ``awaitable`` within ``BOUND``; (what it raised, seconds it took)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(BOUND):
            await awaitable  # type: ignore[misc]
    except TimeoutError as exc:
        if not isinstance(exc, DatabaseTimeout):
            raise AssertionError(f"still waiting after {BOUND} s") from exc
        return exc, time.monotonic() - started
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


async def test_a_stalled_write_times_out_and_never_commits(store: Store) -> None:
    session = await store.sessions.create("s")
    before = (await store.messages.snapshot()).revision
    sub = store.messages.subscribe(session_id=session.id)
    stall = faults(store).stall_next(kind="write")
    error, took = await timed(store.messages.create(session.id, role=Role.USER))
    assert isinstance(error, DatabaseTimeout), error
    assert error.stored is False and error.operation == "write"
    assert error.timeout == JOB_TIMEOUT
    assert took < BOUND
    assert stall.cleared  # the deadline ended the stall: its worker is free
    # Nothing was stored, no revision taken, nothing announced; the store goes on.
    kept = await store.messages.create(session.id, role=Role.USER)
    assert [m.id for m in await store.messages.list(session.id)] == [kept.id]
    assert (await store.messages.snapshot()).revision == before + 2  # the message, the count
    async with asyncio.timeout(BOUND):
        event = await sub.receive()
    assert event.payload.id == kept.id
    sub.close()


async def test_writes_queued_behind_a_stalled_one_are_answered_truly(store: Store) -> None:
    """The stalled job is interrupted at its deadline; those queued behind it run after it
    or expire too: either way, what each caller was told is what the database holds."""
    await store.sessions.create("s")
    stall = faults(store).stall_next(kind="write")
    first = asyncio.ensure_future(store.sessions.create("held"))
    async with asyncio.timeout(BOUND):
        await stall.started()
    queued = [asyncio.ensure_future(store.sessions.create(f"queued {n}")) for n in range(3)]
    told: dict[str, bool] = {}
    for title, task in zip(
        ["held", *(f"queued {n}" for n in range(3))], [first, *queued], strict=True
    ):
        error, _ = await timed(task)
        assert error is None or isinstance(error, DatabaseTimeout), error
        told[title] = error is None
    assert told["held"] is False
    titles = {s.title for s in await store.sessions.list()}
    assert titles == {"s"} | {title for title, stored in told.items() if stored}


async def test_jobs_queued_behind_a_hung_one_expire_and_never_run(sqlite_url: str) -> None:
    """A job the deadline cannot interrupt (it sleeps in the database's thread) keeps its
    worker: the jobs queued behind it are answered at their deadlines and never run later."""
    async with open_store(sqlite_url, debounce=0, job_timeout=JOB_TIMEOUT) as store:
        await store.sessions.create("s")
        ended = threading.Event()

        def hang(tx: Tx) -> None:
            _stall_here(tx)
            ended.set()

        hung = asyncio.ensure_future(store.transaction(hang))
        queued = [asyncio.ensure_future(store.sessions.create(f"queued {n}")) for n in range(3)]
        for task in (hung, *queued):
            error, took = await timed(task)
            assert isinstance(error, DatabaseTimeout), error
            assert took < JOB_TIMEOUT * 2  # answered at the deadline, not when the job ended
        assert await asyncio.to_thread(ended.wait, BOUND)
        async with asyncio.timeout(BOUND):
            await store.sessions.create("after")  # runs once the hung job ended
        assert {s.title for s in await store.sessions.list()} == {"s", "after"}


async def test_a_stalled_read_times_out_and_the_next_read_works(store: Store) -> None:
    session = await store.sessions.create("s")
    faults(store).stall_next(kind="read")
    error, _ = await timed(store.sessions.get(session.id))
    assert isinstance(error, DatabaseTimeout) and error.operation == "read"
    assert (await store.sessions.get(session.id)).title == "s"


async def test_a_transaction_past_its_deadline_is_rolled_back(store: Store) -> None:
    session = await store.sessions.create("s")

    def job(tx: Tx) -> None:
        tx.conn.execute(text("UPDATE sessions SET title = 'changed'"))

    faults(store).stall_next(kind="write")
    error, _ = await timed(store.transaction(job))
    assert isinstance(error, DatabaseTimeout)
    assert (await store.sessions.get(session.id)).title == "s"


async def test_a_caller_cancelled_before_the_deadline_leaves_the_job_to_expire(
    store: Store,
) -> None:
    stall = faults(store).stall_next(kind="write")
    task = asyncio.ensure_future(store.sessions.create("cancelled"))
    async with asyncio.timeout(BOUND):
        await stall.started()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The job still expires at its deadline (rolled back), and no error is left unretrieved.
    error, _ = await timed(store.sessions.create("next"))
    assert error is None or isinstance(error, DatabaseTimeout), error
    assert stall.cleared
    async with asyncio.timeout(BOUND):
        await store.sessions.create("after")
    assert "cancelled" not in {s.title for s in await store.sessions.list()}


async def test_a_sqlite_lock_held_by_another_process_times_out(sqlite_url: str) -> None:
    async with open_store(sqlite_url, debounce=0, job_timeout=JOB_TIMEOUT) as store:
        session = await store.sessions.create("s")
        path = make_url(sqlite_url).database
        assert path is not None
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            error, took = await timed(store.messages.create(session.id, role=Role.USER))
            assert isinstance(error, DatabaseTimeout), error
            assert took < JOB_TIMEOUT + 2
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # The worker was freed (the busy wait is cut to the deadline): writes work again.
        async with asyncio.timeout(BOUND):
            await store.messages.create(session.id, role=Role.USER)
        assert len(await store.messages.list(session.id)) == 1


async def test_a_postgres_row_lock_held_by_another_connection_times_out(
    postgres_url: str,
) -> None:
    async with open_store(postgres_url, debounce=0, job_timeout=JOB_TIMEOUT) as store:
        session = await store.sessions.create("s")
        engine = create_async_engine(postgres_url)
        try:
            async with engine.connect() as other:
                transaction = await other.begin()
                await other.execute(text("SELECT * FROM feed_state FOR UPDATE"))
                error, took = await timed(store.messages.create(session.id, role=Role.USER))
                assert isinstance(error, DatabaseTimeout), error
                assert error.stored is False
                assert took < JOB_TIMEOUT + 2
                await transaction.rollback()
        finally:
            await engine.dispose()
        async with asyncio.timeout(BOUND):
            await store.messages.create(session.id, role=Role.USER)
        assert len(await store.messages.list(session.id)) == 1


async def test_a_postgres_commit_that_is_not_confirmed_is_an_unknown_outcome(
    postgres_url: str,
) -> None:
    """A deferred unique constraint makes the commit itself wait for another transaction:
    the job's body ended in time, its commit did not — the caller is told the outcome is
    unknown, after a second deadline, and the store goes on."""
    async with open_store(postgres_url, debounce=0, job_timeout=JOB_TIMEOUT) as store:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.begin() as setup:
                await setup.execute(
                    text(
                        "CREATE TABLE deferred_keys (k int, CONSTRAINT deferred_unique "
                        "UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
                    )
                )
            async with engine.connect() as other:
                transaction = await other.begin()
                await other.execute(text("INSERT INTO deferred_keys VALUES (1)"))

                def job(tx: Tx) -> None:
                    tx.conn.execute(text("INSERT INTO deferred_keys VALUES (1)"))

                error, took = await timed(store.transaction(job))
                assert isinstance(error, DatabaseTimeout), error
                assert error.stored is None
                assert "may or may not be stored" in str(error)
                assert 2 * JOB_TIMEOUT <= took < 2 * JOB_TIMEOUT + 3
                await transaction.rollback()
        finally:
            await engine.dispose()
        async with asyncio.timeout(BOUND):
            session = await store.sessions.create("after")
        assert (await store.sessions.get(session.id)).title == "after"


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "30", None])
async def test_job_timeout_must_be_a_positive_finite_number(sqlite_url: str, value: object) -> None:
    with pytest.raises(ValueError, match="job_timeout must be a positive, finite number"):
        await open_store(sqlite_url, job_timeout=value)  # type: ignore[arg-type]


def test_the_error_is_public_and_says_what_to_do() -> None:
    assert "DatabaseTimeout" in messagestore.__all__
    error = DatabaseTimeout(30.0, "write")
    assert isinstance(error, MessageStoreError) and isinstance(error, TimeoutError)
    assert "job_timeout=30 s" in str(error)
    assert "nothing of it was stored: retry it" in str(error)
    assert "larger job_timeout" in str(error)
    assert messagestore.DEFAULT_JOB_TIMEOUT == 30.0


def test_the_sync_twin_takes_job_timeout(sqlite_url: str) -> None:
    with messagestore.sync.open_store(sqlite_url, debounce=0, job_timeout=JOB_TIMEOUT) as store:
        session = store.sessions.create("s")
        started = time.monotonic()
        with pytest.raises(DatabaseTimeout):
            store.transaction(lambda tx: _stall_here(tx))
        assert time.monotonic() - started < BOUND
        assert store.sessions.get(session.id).title == "s"


def _stall_here(tx: Tx) -> None:
    """A job that takes longer than the deadline and cannot be interrupted (it sleeps in the
    SQLite database's thread): rolled back at its end."""
    tx.conn.execute(text("UPDATE sessions SET title = 'changed'"))
    time.sleep(JOB_TIMEOUT * 2)


def test_a_blocking_subscription_raises_the_database_timeout_and_receives_again(
    db_url: str,
) -> None:
    """The blocking twin's ``get()`` raises a receive's ``DatabaseTimeout`` as it is (not as
    "no event within None s", though it is a ``TimeoutError``), and the next ``get()``
    receives again instead of raising the stale error."""
    with messagestore.sync.open_store(db_url, debounce=0, job_timeout=JOB_TIMEOUT) as store:
        session = store.sessions.create("s")
        message = store.messages.create(session.id, role=Role.USER)

        repository = store._store._repository
        read_changes = repository.read_changes
        left = [1]

        async def replay_times_out(after: int, **kwargs: Any) -> Any:
            if kwargs.get("kinds", frozenset(Kind)) != frozenset(Kind) and left[0]:
                left[0] -= 1  # a subscription's own replay read, once
                raise DatabaseTimeout(JOB_TIMEOUT, "read")
            return await read_changes(after, **kwargs)

        repository.read_changes = replay_times_out  # type: ignore[method-assign]
        with store.messages.subscribe(since=0) as sub:
            with pytest.raises(DatabaseTimeout):
                sub.get(timeout=BOUND)
            event = sub.get(timeout=BOUND)
            assert event.payload.id == message.id
