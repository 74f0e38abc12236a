"""Every receipt resolves: input whose session is deleted, and a store closed under a running
dispatcher.

A session deleted while the dispatcher has a turn running there and input pending — by the
same store, by another store on the database, over HTTP (``DELETE /api/sessions/{id}``), or by
another OS process — cancels the running turn, and every receipt of the session resolves
``DROPPED`` with the reason ``"session_deleted"``, also on a dispatcher that never started (a
web worker). A store closed under a running dispatcher wakes every receipt waiter, which then
raises ``StoreClosed``. Every test runs on a SQLite file and on PostgreSQL; waits are bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from messagestore import (
    SessionNotFound,
    Store,
    StoreClosed,
    open_store,
)
from messagestore.dispatch import (
    Dispatcher,
    QueueConfig,
    Receipt,
    TurnOutcome,
    inputs_dropped,
)
from messagestore.server import create_app
from tests.support.dispatch_helpers import WAIT, Agent, input_count

FAST = QueueConfig(debounce=0.01, max_wait=0.5)
SESSION_DELETED = "session_deleted"


async def dropped_for_deletion(*receipts: Receipt) -> None:
    for receipt in receipts:
        outcome = await asyncio.wait_for(receipt.outcome(), WAIT)
        assert (outcome, receipt.reason) == (TurnOutcome.DROPPED, SESSION_DELETED), receipt


async def delete_here(store: Store, url: str, session_id: str) -> None:
    await store.sessions.delete(session_id)


async def delete_in_another_store(store: Store, url: str, session_id: str) -> None:
    async with open_store(url) as other:
        await other.sessions.delete(session_id)


async def delete_over_http(store: Store, url: str, session_id: str) -> None:
    async with open_store(url) as server_store:
        transport = httpx.ASGITransport(app=create_app(server_store))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            response = await http.delete(f"/api/sessions/{session_id}")
            assert response.status_code == 204


DELETE_IN_A_PROCESS = """
import asyncio, sys
from messagestore import open_store

async def main():
    async with open_store(sys.argv[1]) as store:
        await store.sessions.delete(sys.argv[2])

asyncio.run(main())
"""


async def delete_in_another_process(store: Store, url: str, session_id: str) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", DELETE_IN_A_PROCESS, url, session_id],
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = await asyncio.to_thread(run)
    assert done.returncode == 0, done.stderr[-2000:]


Deleter = Callable[[Store, str, str], Awaitable[None]]
DELETERS = pytest.mark.parametrize(
    "delete",
    [delete_here, delete_in_another_store, delete_over_http, delete_in_another_process],
    ids=["same store", "another store", "http", "another process"],
)


@DELETERS
async def test_deleting_a_session_drops_its_running_and_pending_input(
    store: Store, db_url: str, delete: Deleter
) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("deleted under the dispatcher")
    other = await store.sessions.create("unrelated")
    signalled: list[dict[str, Any]] = []

    def on_dropped(sender: object, **kwargs: Any) -> None:
        signalled.append(kwargs)

    inputs_dropped.connect(on_dropped)
    try:
        async with Dispatcher(store, agent, FAST, poll_interval=0.05) as dispatcher:
            running = await dispatcher.submit(session.id, "running")
            turn = await agent.next_turn()
            pending = [await dispatcher.submit(session.id, t) for t in ("one", "two")]
            await delete(store, db_url, session.id)
            await dropped_for_deletion(running, *pending)
            assert turn in agent.cancelled  # the running turn was cancelled
            assert dispatcher.stats().dropped == 3
            agent.release()
            unrelated = await dispatcher.submit(other.id, "still served")
            assert await asyncio.wait_for(unrelated.outcome(), WAIT) is TurnOutcome.COMPLETED
            with pytest.raises(SessionNotFound):
                await dispatcher.submit(session.id, "too late")
    finally:
        inputs_dropped.disconnect(on_dropped)
    gone = [s for s in signalled if s["reason"] == SESSION_DELETED]
    assert sorted(i for s in gone for i in s["input_ids"]) == sorted(
        r.id for r in (running, *pending)
    )
    assert await input_count(store, "pending") == 0


@DELETERS
async def test_a_web_workers_receipts_resolve_when_the_session_is_deleted(
    store: Store, db_url: str, delete: Deleter
) -> None:
    """A dispatcher that never started (it only takes input) reads the outcome back: the
    input row went with its session."""
    session = await store.sessions.create("pending, never run")
    web = Dispatcher(store, Agent(), FAST, poll_interval=0.05)
    receipts = [await web.submit(session.id, t) for t in ("a", "b")]
    await delete(store, db_url, session.id)
    await dropped_for_deletion(*receipts)


async def test_input_waiting_for_its_window_is_dropped_when_the_session_is_deleted(
    store: Store,
) -> None:
    """Deleted before its turn started: the start finds the session gone."""
    agent = Agent()
    session = await store.sessions.create("window still open")
    config = QueueConfig(debounce=0.3, max_wait=1.0)
    async with Dispatcher(store, agent, config, poll_interval=0.05) as dispatcher:
        receipt = await dispatcher.submit(session.id, "never runs")
        await store.sessions.delete(session.id)
        await dropped_for_deletion(receipt)
    assert agent.turns == []


async def test_closing_the_store_under_a_running_dispatcher_ends_every_wait(
    store: Store,
) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("store closed first")
    dispatcher = Dispatcher(store, agent, FAST, poll_interval=0.05)
    await dispatcher.start()
    running = await dispatcher.submit(session.id, "running")
    turn = await agent.next_turn()
    pending = await dispatcher.submit(session.id, "pending")
    waiters = [asyncio.ensure_future(r.outcome()) for r in (running, pending)]
    await asyncio.wait_for(store.close(), WAIT)
    done, _ = await asyncio.wait(waiters, timeout=WAIT)
    assert len(done) == 2, "a receipt kept waiting after the store closed"
    for waiter in waiters:
        with pytest.raises(StoreClosed):
            waiter.result()
    assert turn in agent.cancelled
    await asyncio.wait_for(dispatcher.close(), WAIT)
    with pytest.raises(StoreClosed):
        await asyncio.wait_for(running.outcome(), WAIT)
