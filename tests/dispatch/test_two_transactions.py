"""A turn in two write transactions: with ``ReplyConfig`` the reply is created in the turn's
start transaction, and a reply ``run_turn`` leaves unfinished gets its ``Finish`` in the
turn's end transaction (``MessageService.update_with``). Counted with
``messagestore.testing.write_transactions``; a process dying between the two transactions is
repaired, and an end transaction that fails commits nothing and is done again in parts.
SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import update

from messagestore import FinishReason, Message, Role, Store, open_store
from messagestore._dispatch._tables import dispatch_sessions
from messagestore._model import utc_now
from messagestore.dispatch import Dispatcher, QueueConfig, ReplyConfig, Turn, TurnOutcome
from messagestore.testing import faults, lease_state, write_transactions
from pubsub import EventType
from tests.store.test_recovery_sweep import kill_lease, repaired
from tests.support.dispatch_helpers import WAIT, turn_states

FAST = QueueConfig(debounce=0.01, max_wait=0.5)
RunTurn = Callable[[Turn], Awaitable[None]]


async def streams_and_returns(turn: Turn) -> None:
    """Streams two words into the reply and returns: the dispatcher finishes it."""
    reply = await turn.reply(model="toy")
    for word in ("hello ", "there"):
        reply.append_text(word)
        await turn.store.messages.update(reply)


async def finishes_itself(turn: Turn) -> None:
    """Creates (or takes) the reply, streams, and finishes it with its own ``update()``."""
    reply = await turn.reply(model="toy")
    reply.append_text("hello there")
    await turn.store.messages.update(reply)
    reply.add_finish(FinishReason.END_TURN)
    await turn.store.messages.update(reply)


async def _one_turn(store: Store, run_turn: RunTurn, reply: ReplyConfig | None) -> int:
    """Run one turn of a fresh session and return the write transactions it cost, from the
    dispatcher's start to the input's outcome (the input is submitted before: its own
    transaction is not counted). Lease heartbeats meanwhile are not the turn's."""
    session = await store.sessions.create("counted")
    dispatcher = Dispatcher(store, run_turn, FAST, poll_interval=5.0, claim_ttl=60.0, reply=reply)
    receipt = await dispatcher.submit(session.id, "hi")
    lease = lease_state(store)
    assert lease is not None
    beats, before = lease.heartbeats, write_transactions(store)
    async with dispatcher:
        async with asyncio.timeout(WAIT):
            assert await receipt.outcome() is TurnOutcome.COMPLETED
        cost = write_transactions(store) - before
    lease = lease_state(store)
    assert lease is not None
    stored = await store.messages.list(session.id)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT]
    final = stored[1]
    assert final.text == "hello there" and final.model == "toy"
    assert final.finish is not None and final.finish.reason is FinishReason.END_TURN
    assert await turn_states(store, session.id) == ["completed"]
    return cost - (lease.heartbeats - beats)


async def test_a_turn_costs_two_write_transactions_with_reply_config(db_url: str) -> None:
    # A long debounce keeps the streamed states buffered: no tick writes them on its own.
    async with open_store(db_url, debounce=5.0) as store:
        assert await _one_turn(store, streams_and_returns, ReplyConfig(model="toy")) == 2
        # What each half saves on its own, and the classic turn it started from:
        assert await _one_turn(store, finishes_itself, ReplyConfig(model="toy")) == 3
        assert await _one_turn(store, streams_and_returns, None) == 3
        assert await _one_turn(store, finishes_itself, None) == 4


async def test_the_reply_is_announced_with_the_start_and_finished_with_the_end(
    store: Store,
) -> None:
    session = await store.sessions.create("events")
    seen: list[Turn] = []

    async def run_turn(turn: Turn) -> None:
        seen.append(turn)
        assert len(turn.replies) == 1  # there from the start
        await streams_and_returns(turn)

    config = ReplyConfig(model="m", provider="p")
    async with (
        store.messages.subscribe(session_id=session.id) as sub,
        Dispatcher(store, run_turn, FAST, reply=config) as dispatcher,
    ):
        receipt = await dispatcher.submit(session.id, "hi")
        async with asyncio.timeout(WAIT):
            first = await sub.receive()
            created = await sub.receive()
            final = created
            while not final.payload.is_finished:
                final = await sub.receive()
            assert await receipt.outcome() is TurnOutcome.COMPLETED
        dispatcher_turn = seen[0]
    assert first.type is EventType.CREATED and first.payload.role is Role.USER
    assert created.type is EventType.CREATED and created.payload.role is Role.ASSISTANT
    assert created.payload.revision == first.payload.revision + 2  # one commit (and session)
    assert created.payload.provider == "p"
    reply = final.payload
    assert reply.id == created.payload.id == dispatcher_turn.replies[0].id
    assert reply.text == "hello there" and reply.model == "toy"  # reply(model=...) wins
    assert reply.finish is not None and reply.finish.reason is FinishReason.END_TURN


async def test_a_turn_that_never_calls_reply_still_gets_its_reply_finished(
    store: Store,
) -> None:
    session = await store.sessions.create("silent")

    async def run_turn(turn: Turn) -> None:
        return None

    async with Dispatcher(store, run_turn, FAST, reply=ReplyConfig()) as dispatcher:
        receipt = await dispatcher.submit(session.id, "hi")
        async with asyncio.timeout(WAIT):
            assert await receipt.outcome() is TurnOutcome.COMPLETED
    stored = await store.messages.list(session.id)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT]
    assert stored[1].finish is not None and stored[1].finish.reason is FinishReason.END_TURN


async def test_a_failing_end_transaction_commits_nothing_and_is_done_again_in_parts(
    db_url: str,
) -> None:
    """The reply's Finish and the turn's end fail together (rolled back); the dispatcher
    then writes the reply and records the end on their own: one completed turn, one
    finished reply, each written once more than the failed transaction."""
    async with open_store(db_url, debounce=5.0) as store:
        session = await store.sessions.create("retried")
        armed: list[int] = []

        async def run_turn(turn: Turn) -> None:
            await streams_and_returns(turn)
            faults(store).fail_next(kind="write", error=RuntimeError("the end fails (a test)"))
            armed.append(write_transactions(store))

        config = ReplyConfig(model="toy")
        dispatcher = Dispatcher(
            store, run_turn, FAST, poll_interval=5.0, claim_ttl=60.0, reply=config
        )
        async with dispatcher:
            receipt = await dispatcher.submit(session.id, "hi")
            async with asyncio.timeout(WAIT):
                assert await receipt.outcome() is TurnOutcome.COMPLETED
            after = write_transactions(store)
        assert after - armed[0] == 2  # the failed one committed nothing; then reply, end
        assert dispatcher.stats().database_errors == 1
        assert await turn_states(store, session.id) == ["completed"]
        stored = await store.messages.list(session.id)
        assert stored[1].text == "hello there"
        assert stored[1].finish is not None and stored[1].finish.reason is FinishReason.END_TURN


async def _expire(store: Store, session_id: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(dispatch_sessions)
            .where(dispatch_sessions.c.session_id == session_id)
            .values(expires_at=utc_now() - timedelta(hours=1))
        )


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "untouched"])
async def test_a_process_dying_between_the_two_transactions_is_repaired(
    db_url: str, streamed: bool
) -> None:
    """The start committed (turn running, reply created), the process died before the end:
    another dispatcher marks the turn interrupted and the sweep finishes the reply."""
    started: asyncio.Queue[Message] = asyncio.Queue()

    async def dying_turn(turn: Turn) -> None:
        reply = await turn.reply()
        if streamed:
            reply.append_text("half a reply")
            await turn.store.messages.update(reply)
            await turn.store.messages.flush(reply.id)
        started.put_nowait(reply)
        await asyncio.Event().wait()  # until cancelled

    async with open_store(db_url) as dying_store, open_store(db_url) as survivor:
        session = await survivor.sessions.create("repaired between the two")
        config = ReplyConfig(model="toy")
        a = Dispatcher(
            dying_store, dying_turn, FAST, poll_interval=0.05, claim_ttl=60.0, reply=config
        )
        b = Dispatcher(survivor, finishes_itself, FAST, poll_interval=0.05, claim_ttl=60.0)
        async with a:
            await a.submit(session.id, "cut off")
            reply = await asyncio.wait_for(started.get(), WAIT)
            async with survivor.messages.subscribe(session_id=session.id) as sub:
                await kill_lease(dying_store)  # the process died: its lease and claim ended
                await _expire(survivor, session.id)
                async with b:
                    fixed = await repaired(sub, reply.id)
            assert await turn_states(survivor, session.id) == ["interrupted"]
            assert b.stats().turns_repaired == 1
    assert fixed.role is Role.ASSISTANT and fixed.model == "toy"
    assert fixed.text == ("half a reply" if streamed else "")
    assert fixed.finish is not None and fixed.finish.reason is FinishReason.INTERRUPTED
