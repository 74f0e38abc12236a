"""When turns run: coalescing, one turn at a time, stop / cancel / reset, wake-ups.

Every test runs on a SQLite file and on PostgreSQL, with a real ``Dispatcher`` and an agent
(``Agent``) that tests hold and release with events; waits are bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from messagestore import FinishReason, Role, Store
from messagestore._dispatch._tables import dispatch_inputs
from messagestore.dispatch import (
    Dispatcher,
    QueueConfig,
    QueueMode,
    Turn,
    TurnOutcome,
    turn_failed,
)
from messagestore.testing import poll_now
from tests.support.dispatch_helpers import WAIT, Agent, outcomes, turn_states

FAST = QueueConfig(debounce=0.01, max_wait=0.5)


async def test_inputs_then_a_late_one_give_at_most_two_turns_never_two_at_once(
    store: Store,
) -> None:
    """Three messages at 0, 20 and 300 ms, a 50 ms window, a 150 ms turn."""
    running = 0
    overlap = False
    texts: list[str] = []

    async def run_turn(turn: Turn) -> None:
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        texts.append(turn.text)
        await asyncio.sleep(0.15)
        running -= 1

    session = await store.sessions.create("three")
    config = QueueConfig(debounce=0.05, max_wait=1.0)
    async with Dispatcher(store, run_turn, config) as dispatcher:
        first = await dispatcher.submit(session.id, "one")
        await asyncio.sleep(0.02)
        second = await dispatcher.submit(session.id, "two")
        await asyncio.sleep(0.28)
        third = await dispatcher.submit(session.id, "three")
        assert await outcomes(first, second, third) == ["completed"] * 3
    assert 1 <= len(texts) <= 2 and not overlap
    assert "\n\n".join(texts) == "one\n\ntwo\n\nthree"


async def test_two_inputs_during_a_turn_become_exactly_one_follow_up(store: Store) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("collect")
    async with Dispatcher(store, agent, FAST) as dispatcher:
        first = await dispatcher.submit(session.id, "first")
        await agent.next_turn()
        later = [await dispatcher.submit(session.id, t) for t in ("second", "third")]
        agent.release()
        assert await outcomes(first, *later) == ["completed"] * 3
        assert agent.texts() == ["first", "second\n\nthird"]
        follow_up = agent.turns[1]
        assert [i.text for i in follow_up.inputs] == ["second", "third"]
        assert follow_up.user_message.text == "second\n\nthird"
    assert agent.peak[session.id] == 1
    users = await store.messages.list_user_messages(session.id)
    assert [m.text for m in users] == ["first", "second\n\nthird"]


async def test_stop_during_a_long_turn_with_pending_input_gives_no_second_turn(
    store: Store,
) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("stop")
    async with Dispatcher(store, agent, FAST) as dispatcher:
        running = await dispatcher.submit(session.id, "long task")
        turn = await agent.next_turn()
        pending = await dispatcher.submit(session.id, "waiting")
        assert await dispatcher.stop(session.id) is True
        assert await outcomes(running, pending) == ["cancelled", "cancelled"]
        assert await dispatcher.stop(session.id) is False  # nothing left to cancel
        stats = dispatcher.stats()
    assert agent.texts() == ["long task"] and agent.cancelled == [turn]
    assert stats.turns_started == 1 and stats.turns_cancelled == 1 and stats.discarded == 1
    (reply,) = [m for m in await store.messages.list(session.id) if m.role is Role.ASSISTANT]
    assert reply.finish is not None and reply.finish.reason is FinishReason.CANCELED
    assert await turn_states(store, session.id) == ["cancelled"]


async def test_a_session_with_a_turn_in_flight_is_not_driven_twice(store: Store) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("in flight")
    async with Dispatcher(store, agent, FAST) as dispatcher:
        first = await dispatcher.submit(session.id, "first")
        await agent.next_turn()
        # Input from elsewhere (a dispatcher that never starts: a web worker).
        web = Dispatcher(store, agent, FAST)
        second = await web.submit(session.id, "from the web")
        dispatcher.poke(session.id)
        dispatcher.poke()
        await poll_now(dispatcher)  # a poll that finds the pending input
        await asyncio.sleep(0.05)  # (longer than the window: a wrong start would happen)
        assert len(agent.turns) == 1 and dispatcher.stats().turns_started == 1
        agent.release()
        assert await outcomes(first) == ["completed"]
        # Driven after completion: the pending input runs now.
        assert await outcomes(second) == ["completed"]
        assert agent.texts() == ["first", "from the web"]
    assert agent.peak[session.id] == 1


async def test_cancel_one_cancels_the_running_turn_and_keeps_pending(store: Store) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("cancel one")
    async with Dispatcher(store, agent, FAST) as dispatcher:
        first = await dispatcher.submit(session.id, "first")
        await agent.next_turn()
        second = await dispatcher.submit(session.id, "second")
        assert await dispatcher.cancel_one(session.id) is True
        assert await outcomes(first) == ["cancelled"]
        await agent.next_turn()
        assert await dispatcher.cancel_one(session.id) is True
        assert await outcomes(second) == ["cancelled"]
        assert await dispatcher.cancel_one(session.id) is False
    assert agent.texts() == ["first", "second"]


async def test_cancel_all_makes_pending_input_stale_even_when_a_poll_finds_it_later(
    store: Store,
) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("cancel all")
    async with Dispatcher(store, agent, FAST) as dispatcher:
        first = await dispatcher.submit(session.id, "first")
        await agent.next_turn()
        old = [await dispatcher.submit(session.id, t) for t in ("old 1", "old 2")]
        assert await dispatcher.cancel_all(session.id) is True
        assert await outcomes(first, *old) == ["cancelled", "stale", "stale"]
        # An input submitted before the cutoff that commits late (PostgreSQL hands out
        # sequence numbers before commit): put one back to pending, as if it just committed.
        async with store.engine.begin() as conn:
            await conn.execute(
                update(dispatch_inputs)
                .where(dispatch_inputs.c.id == old[0].id)
                .values(state="pending", ended_at=None)
            )
        await poll_now(dispatcher)
        agent.release()
        fresh = await dispatcher.submit(session.id, "after the cutoff")
        assert await outcomes(fresh) == ["completed"]
        stats = dispatcher.stats()
    assert agent.texts() == ["first", "after the cutoff"]
    assert stats.stale >= 2
    async with store.engine.connect() as conn:
        state = (
            await conn.execute(
                select(dispatch_inputs.c.state).where(dispatch_inputs.c.id == old[0].id)
            )
        ).scalar_one()
    assert state == "stale"


async def test_reset_forgets_running_turns_and_ignores_their_completion(store: Store) -> None:
    unwinding = asyncio.Event()
    finish_unwinding = asyncio.Event()
    started: asyncio.Queue[Turn] = asyncio.Queue()
    overlapped = False
    running = 0

    async def run_turn(turn: Turn) -> None:
        nonlocal running, overlapped
        running += 1
        overlapped = overlapped or running > 1
        started.put_nowait(turn)
        try:
            if turn.text == "old":
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    unwinding.set()
                    await finish_unwinding.wait()  # a slow cleanup
                    raise
        finally:
            running -= 1

    session = await store.sessions.create("reset")
    async with Dispatcher(store, run_turn, FAST) as dispatcher:
        old = await dispatcher.submit(session.id, "old")
        old_turn = await asyncio.wait_for(started.get(), WAIT)
        await dispatcher.reset()
        assert await outcomes(old) == ["cancelled"]  # resolved at once
        await asyncio.wait_for(unwinding.wait(), WAIT)
        new = await dispatcher.submit(session.id, "new")
        new_turn = await asyncio.wait_for(started.get(), WAIT)
        assert await outcomes(new) == ["completed"]
        assert new_turn.generation == old_turn.generation + 1
        assert overlapped, "the new generation started while the old one unwound"
        finish_unwinding.set()
        stats_before = dispatcher.stats()
    assert stats_before.turns_completed == 1
    assert old.result() is TurnOutcome.CANCELLED
    assert sorted(await turn_states(store, session.id)) == ["cancelled", "completed"]


async def test_leaving_async_with_cancels_turns_and_keeps_pending_input(store: Store) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("close")
    async with Dispatcher(store, agent, FAST, poll_interval=0.05, claim_ttl=1.0) as dispatcher:
        running = await dispatcher.submit(session.id, "running")
        await agent.next_turn()
        pending = await dispatcher.submit(session.id, "pending")
        waiting = asyncio.create_task(pending.outcome())  # waits across the close
        await asyncio.sleep(0)
    assert running.result() is TurnOutcome.CANCELLED
    assert not pending.done() and not waiting.done()
    again = Agent()
    async with Dispatcher(store, again, FAST):
        assert await asyncio.wait_for(waiting, WAIT) is TurnOutcome.COMPLETED
    assert again.texts() == ["pending"]


async def test_queue_mode_runs_inputs_in_order_up_to_max_concurrent(store: Store) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("queue")
    config = QueueConfig(mode=QueueMode.QUEUE, max_concurrent=2)
    async with Dispatcher(store, agent, config) as dispatcher:
        receipts = [await dispatcher.submit(session.id, f"job {i}") for i in range(3)]
        first = {(await agent.next_turn()).text, (await agent.next_turn()).text}
        await poll_now(dispatcher)
        assert first == {"job 0", "job 1"} and len(agent.turns) == 2
        agent.release()
        assert await outcomes(*receipts) == ["completed"] * 3
    assert agent.peak[session.id] == 2
    assert sorted(agent.texts()) == ["job 0", "job 1", "job 2"]
    assert agent.texts()[2] == "job 2"


async def test_max_turns_caps_turns_across_sessions(store: Store) -> None:
    agent = Agent(hold=True)
    sessions = [await store.sessions.create(f"s{i}") for i in range(3)]
    async with Dispatcher(store, agent, FAST, max_turns=2) as dispatcher:
        receipts = [await dispatcher.submit(s.id, f"hi {i}") for i, s in enumerate(sessions)]
        await agent.next_turn()
        await agent.next_turn()
        await poll_now(dispatcher)
        assert len(agent.turns) == 2
        agent.release()
        assert await outcomes(*receipts) == ["completed"] * 3
    assert agent.total_peak == 2


async def test_throttle_serializes_one_session(store: Store) -> None:
    agent = Agent(hold=True)
    tight, loose = [await store.sessions.create(n) for n in ("near limit", "free")]
    config = QueueConfig(mode=QueueMode.QUEUE, max_concurrent=3)

    def throttle(session_id: str) -> int | None:
        return 1 if session_id == tight.id else None

    async with Dispatcher(store, agent, config, throttle=throttle) as dispatcher:
        receipts = [await dispatcher.submit(s.id, f"{n}") for s in (tight, loose) for n in "abc"]
        for _ in range(4):
            await agent.next_turn()
        await poll_now(dispatcher)
        assert len(agent.turns) == 4
        agent.release()
        assert await outcomes(*receipts) == ["completed"] * 6
    assert agent.peak[tight.id] == 1 and agent.peak[loose.id] == 3


async def test_a_failing_turn_is_failed_logged_signalled_and_the_session_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(fail_on="boom")
    failures: list[str] = []

    def on_failure(sender: object, **kwargs: object) -> None:
        failures.append(str(kwargs["error"]))

    turn_failed.connect(on_failure)
    session = await store.sessions.create("failing")
    try:
        async with Dispatcher(store, agent, FAST) as dispatcher:
            bad = await dispatcher.submit(session.id, "boom")
            assert await outcomes(bad) == ["failed"]
            good = await dispatcher.submit(session.id, "fine")
            assert await outcomes(good) == ["completed"]
            stats = dispatcher.stats()
    finally:
        turn_failed.disconnect(on_failure)
    assert failures == ["agent failed on 'boom'"]
    assert stats.turns_failed == 1 and stats.turns_completed == 1
    replies = [m for m in await store.messages.list(session.id) if m.role is Role.ASSISTANT]
    assert [m.finish.reason for m in replies if m.finish] == [
        FinishReason.ERROR,
        FinishReason.END_TURN,
    ]
    assert "run_turn of session" in caplog.text


async def test_a_run_turn_that_is_not_async_fails_its_turn_with_a_clear_error(
    store: Store,
) -> None:
    def not_async(turn: Turn) -> None:
        return None

    session = await store.sessions.create("sync")
    errors: list[BaseException] = []

    def on_failure(sender: object, **kwargs: object) -> None:
        errors.append(kwargs["error"])  # type: ignore[arg-type]

    turn_failed.connect(on_failure)
    try:
        async with Dispatcher(store, not_async, FAST) as dispatcher:
            receipt = await dispatcher.submit(session.id, "hello")
            assert await outcomes(receipt) == ["failed"]
    finally:
        turn_failed.disconnect(on_failure)
    assert "must be an async function" in str(errors[0])
