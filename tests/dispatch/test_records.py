"""Inputs and turns as the database knows them, read from a dispatcher that runs nothing
(a web process following turns another process runs): an input found by its key, the
session's active input while pending and while running, a turn's replies in order (and only
its own). SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from messagestore import FinishReason, InvalidMessage, Role, Store, ToolResult
from messagestore.dispatch import Dispatcher, QueueConfig, Turn, TurnOutcome

WAIT = 20
FAST = QueueConfig(debounce=0.01, max_wait=0.5)


async def test_a_turn_and_its_replies_are_read_from_another_dispatcher(store: Store) -> None:
    release = asyncio.Event()
    running = asyncio.Event()

    async def run_turn(turn: Turn) -> None:
        first = await turn.reply(model="m")
        first.append_text("calling")
        first.add_finish(FinishReason.TOOL_USE)
        await turn.store.messages.update(first)
        await turn.store.messages.create(
            turn.session_id, role=Role.TOOL, parts=[ToolResult("c1", "tool", "out")]
        )
        second = await turn.reply(model="m")
        second.append_text("done")
        await turn.store.messages.update(second)
        running.set()
        await asyncio.wait_for(release.wait(), WAIT)
        second.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(second)

    session = await store.sessions.create("records")
    web = Dispatcher(store, run_turn, FAST)  # never started: it only takes input and reads
    receipt = await web.submit(session.id, "hello", key="ui-1")
    found = await web.find_input(session.id, "ui-1")
    assert found is not None and found.id == receipt.id
    assert found.pending and found.turn_id is None and found.outcome is None
    assert (await web.active_input(session.id)) == found
    assert await web.find_input(session.id, "other") is None

    async with Dispatcher(store, run_turn, FAST):
        async with asyncio.timeout(WAIT):
            await running.wait()
        record = await web.get_input(receipt.id)
        assert record is not None and record.state == "running" and record.turn_id
        active = await web.active_input(session.id)
        assert active is not None and active.id == receipt.id
        turn = await web.get_turn(record.turn_id)
        assert turn is not None and turn.running and turn.input_ids == (receipt.id,)
        assert [m.role for m in turn.replies] == [Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
        release.set()
        assert await receipt.outcome() is TurnOutcome.COMPLETED

    ended = await web.get_input(receipt.id)
    assert ended is not None and ended.outcome is TurnOutcome.COMPLETED
    assert await web.active_input(session.id) is None
    assert ended.turn_id is not None
    turn = await web.get_turn(ended.turn_id)
    assert turn is not None and not turn.running and turn.state == "completed"
    assert turn.ended_at is not None
    stored = await store.messages.list(session.id)
    assert turn.user_message_id == stored[0].id
    assert [m.id for m in turn.replies] == [m.id for m in stored[1:]]
    assert turn.replies[-1].text == "done" and turn.replies[-1].is_finished


async def test_a_turns_replies_end_where_the_next_turn_begins(store: Store) -> None:
    async def run_turn(turn: Turn) -> None:
        reply = await turn.reply()
        reply.append_text(f"re: {turn.text}")
        reply.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(reply)

    session = await store.sessions.create("two turns")
    async with Dispatcher(store, run_turn, FAST) as dispatcher:
        one = await dispatcher.submit(session.id, "one", key="k1")
        assert await one.outcome() is TurnOutcome.COMPLETED
        two = await dispatcher.submit(session.id, "two", key="k2")
        assert await two.outcome() is TurnOutcome.COMPLETED
        first = await dispatcher.find_input(session.id, "k1")
        second = await dispatcher.find_input(session.id, "k2")
        assert first is not None and first.turn_id and second is not None and second.turn_id
        turn_one = await dispatcher.get_turn(first.turn_id)
        turn_two = await dispatcher.get_turn(second.turn_id)
    assert turn_one is not None and turn_two is not None
    assert [m.text for m in turn_one.replies] == ["re: one"]
    assert [m.text for m in turn_two.replies] == ["re: two"]


async def test_unknown_ids_read_as_none_and_bad_keys_are_refused(store: Store) -> None:
    session = await store.sessions.create("none")

    async def run_turn(turn: Turn) -> None:
        del turn

    web = Dispatcher(store, run_turn)
    assert await web.get_input("nope") is None
    assert await web.get_turn("nope") is None
    assert await web.active_input(session.id) is None
    with pytest.raises(InvalidMessage):
        await web.find_input(session.id, "")
    with pytest.raises(InvalidMessage):
        await web.find_input(session.id, None)  # type: ignore[arg-type]
