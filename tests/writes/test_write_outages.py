"""Writes during an outage: new changes never shorten the flusher's backoff, and once the
database's writer thread is gone every write fails at once, naming it, and ``close()`` closes.

Every wait is bounded, so a regression shows as a failure within seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import pytest

from messagestore import (
    BackgroundTaskFailed,
    Role,
    WriteFailed,
    write_failed,
)
from messagestore.testing import faults
from tests.support.races import (
    bounded,
    opened,
)


async def test_new_changes_during_an_outage_keep_the_backoff(db_url: str) -> None:
    """During an outage, changes to new ids re-armed ticks at the debounce rate,
    bypassing the backoff. Every retry must wait at least the announced ``retry_in`` (a lower
    bound: a busy machine only makes the gaps longer)."""
    async with opened(db_url, debounce=0.005) as store:
        session = await store.sessions.create("outage")
        repository = store._repository
        attempts: list[float] = []
        retries: list[float] = []
        failed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def broken(batch: Any, on_commit: Any, **kw: Any) -> Any:
            attempts.append(loop.time())
            future = loop.create_future()
            future.set_exception(sqlite3.OperationalError("disk I/O error (injected)"))
            return future

        def on_failure(sender: object, **kwargs: Any) -> None:
            retries.append(kwargs["retry_in"])
            failed.set()

        repository.write_messages = broken
        write_failed.connect(on_failure)
        try:
            async with bounded("six failed ticks"):
                while len(retries) < 6:
                    message = await store.messages.create(session.id, role=Role.ASSISTANT)
                    message.append_text("during the outage")
                    await store.messages.update(message)  # a new dirty id
                    failed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.002):
                            await failed.wait()
        finally:
            write_failed.disconnect(on_failure)
            del repository.write_messages  # the class's method again
        assert retries == sorted(retries) and retries[-1] > retries[0]
        for n in range(1, len(attempts)):
            gap = attempts[n] - attempts[n - 1]
            assert gap >= retries[n - 1] - 0.002, (n, gap, retries[n - 1])


@pytest.mark.postgres
async def test_writes_fail_fast_once_the_writer_task_is_gone(postgres_url: str) -> None:
    """If what commits ends (a bug kills it), the flusher may end silently. On PostgreSQL
    that is the database's writer thread: once it is gone, every write must fail at once
    (not wait forever) with an error naming it, and ``close()`` must still close."""
    store = await opened(postgres_url, debounce=0.01)
    session = await store.sessions.create("writer gone")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    faults(store).crash_next(kind="write")  # the writer thread dies taking the next write
    async with bounded("the write that finds the writer dying"):
        with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
            await store.sessions.create("the last one")
    message.append_text("after the writer")
    await store.messages.update(message)
    async with bounded("flush_all with the writer gone"):
        with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
            await store.messages.flush_all()
    async with bounded("a session write with the writer gone"):
        with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
            await store.sessions.create("never")
    async with bounded("close with the writer gone"):
        with contextlib.suppress(WriteFailed):
            await store.close()
    assert store.closed
