"""The dispatcher's transactions run through ``Store.transaction``; one whose caller stopped
waiting still ends before the dispatcher's ``close()`` returns."""

from __future__ import annotations

import asyncio

import pytest

from messagestore import Store, open_store
from messagestore.dispatch import Dispatcher
from messagestore.testing import faults
from tests.support.dispatch_helpers import WAIT, Agent, input_count


async def test_close_waits_for_a_transaction_whose_caller_was_cancelled(db_url: str) -> None:
    async with open_store(db_url) as store:
        await _close_waits(store)


async def _close_waits(store: Store) -> None:
    session = await store.sessions.create("abandoned")
    dispatcher = Dispatcher(store, Agent())  # never started: close() only has to wait
    stall = faults(store).stall_next(kind="write")
    submitting = asyncio.create_task(dispatcher.submit(session.id, "hello"))
    async with asyncio.timeout(WAIT):
        await stall.started()
    submitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitting
    closing = asyncio.create_task(dispatcher.close())
    done, _ = await asyncio.wait({closing}, timeout=0.2)
    assert not done, "close() returned while the submit's transaction was still open"
    stall.release()
    async with asyncio.timeout(WAIT):
        await closing
    assert await input_count(store, "pending") == 1  # it committed, as a whole
