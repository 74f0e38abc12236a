"""Claims between dispatchers on one database (two dispatchers in one process stand for two
processes: each has its own owner id). SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update

from messagestore import Store
from messagestore._dispatch._tables import dispatch_sessions
from messagestore._model import utc_now
from messagestore.dispatch import (
    Dispatcher,
    QueueConfig,
    QueueMode,
    Steering,
    Turn,
)
from messagestore.testing import lease_state, renew_claims
from tests.support.dispatch_helpers import WAIT, Agent, outcomes, turn_states

STEER = QueueConfig(mode=QueueMode.STEER, debounce=0.01, max_wait=0.5)


async def _claim(store: Store, session_id: str) -> tuple[str | None, int]:
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                select(dispatch_sessions.c.owner, dispatch_sessions.c.token).where(
                    dispatch_sessions.c.session_id == session_id
                )
            )
        ).one()
    return row[0], row[1]


async def test_a_dispatcher_whose_claim_was_taken_over_cannot_consume_input(
    store: Store,
) -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    tried = asyncio.Event()
    steered: list[Steering | None] = []

    a_texts: list[str] = []

    async def slow_turn(turn: Turn) -> None:  # frozen past its lease, then tries to steer
        a_texts.append(turn.text)
        if turn.text != "first":
            return  # A is alive again: it may legitimately run later turns
        started.set()
        await go.wait()
        steered.append(await turn.steering())
        tried.set()
        await asyncio.Event().wait()  # until cancelled

    session = await store.sessions.create("taken over")
    # A renews its claims only every 20 s: long enough to expire it by hand in between.
    a = Dispatcher(store, slow_turn, STEER, poll_interval=0.05, claim_ttl=60.0)
    b_agent = Agent()
    b = Dispatcher(store, b_agent, STEER, poll_interval=0.05, claim_ttl=60.0)
    async with a:
        first = await a.submit(session.id, "first")
        await asyncio.wait_for(started.wait(), WAIT)
        owner, token = await _claim(store, session.id)
        assert owner == a.owner
        await _expire(store, session.id)  # A froze: its lease ran out
        async with b:
            second = await b.submit(session.id, "second")
            assert await outcomes(second) == ["completed"]
            assert await _claim(store, session.id) == (None, token + 1)  # taken, then released
            # A wakes up: its steering finds the claim gone and takes nothing ...
            go.set()
            third = await b.submit(session.id, "third")
            await asyncio.wait_for(tried.wait(), WAIT)
            assert steered == [None]
            # ... and its next renewal learns the claim was lost and cancels the turn.
            await renew_claims(a)
            assert await outcomes(first, third) == ["failed", "completed"]
        assert a.stats().claims_lost == 1
    assert b_agent.texts()[0] == "second"
    assert sorted(a_texts[1:] + b_agent.texts()[1:]) == ["third"]  # by one of them, once
    assert await turn_states(store, session.id) == ["interrupted", "completed", "completed"]


async def _expire(store: Store, session_id: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(dispatch_sessions)
            .where(dispatch_sessions.c.session_id == session_id)
            .values(expires_at=utc_now() - timedelta(hours=1))
        )


async def test_repairing_a_dead_processs_turn_sweeps_its_reply_at_once(db_url: str) -> None:
    """The dispatcher that repairs a turn of a dead process asks its store for a sweep: the
    reply is finished without waiting for a heartbeat (the survivor's is 10 s away)."""
    from messagestore import FinishReason, Message, Role, open_store
    from tests.store.test_recovery_sweep import kill_lease, repaired

    streamed: asyncio.Queue[Message] = asyncio.Queue()

    async def streaming_turn(turn: Turn) -> None:  # streams, then its process "dies"
        reply = await turn.reply(model="toy")
        reply.append_text("half a reply")
        await turn.store.messages.update(reply)
        await turn.store.messages.flush(reply.id)
        streamed.put_nowait(reply)
        await asyncio.Event().wait()  # until cancelled

    async with open_store(db_url) as dying_store, open_store(db_url) as survivor:
        session = await survivor.sessions.create("repaired, then swept")
        a = Dispatcher(dying_store, streaming_turn, STEER, poll_interval=0.05, claim_ttl=60.0)
        b = Dispatcher(survivor, Agent(), STEER, poll_interval=0.05, claim_ttl=60.0)
        async with a:
            await a.submit(session.id, "cut off")
            reply = await asyncio.wait_for(streamed.get(), WAIT)
            async with survivor.messages.subscribe(session_id=session.id) as sub:
                await kill_lease(dying_store)  # the process died: its lease and claim ended
                await _expire(survivor, session.id)
                async with b:
                    fixed = await repaired(sub, reply.id)
            assert await turn_states(survivor, session.id) == ["interrupted"]
            assert fixed.role is Role.ASSISTANT and fixed.text == "half a reply"
            assert fixed.finish is not None and fixed.finish.reason is FinishReason.INTERRUPTED
            lease = lease_state(survivor)
            assert lease is not None and lease.heartbeats == 0
            assert b.stats().turns_repaired == 1
