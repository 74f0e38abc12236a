"""Another process's streaming changes are read from what was appended, not from whole rows.

The feed's reader holds the state it last read of each unfinished message; a message that was
only appended to since is brought up to date from the new append rows alone, and its event
carries the delta built from them. Checked here: such a change decodes no message row; every
event's delta applies to the subscriber's copy and gives exactly the payload; after random
histories (text, reasoning, tool calls whose input grows, tool results, rewrites that remove
parts, folds, finishes, deletes, and commits of the reading store itself in between) every view
equals the database field by field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

import messagestore._database._revisions as revisions
from messagestore import (
    FinishReason,
    Message,
    MessageDelta,
    Role,
    Store,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore._database._read_states import ReadStates
from pubsub import EventType
from tests.feed.test_deltas import View, check_views, fields
from tests.support.feed_helpers import WAIT


@contextmanager
def counting_row_decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record the id of every message row the change reader decodes whole."""
    decoded: list[str] = []
    real: Callable[[Any], Message] = revisions.message_from_row

    def counted(row: Any) -> Message:
        message = real(row)
        decoded.append(message.id)
        return message

    monkeypatch.setattr(revisions, "message_from_row", counted)
    yield decoded


async def test_an_appended_change_decodes_no_row_and_carries_what_was_appended(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(db_url) as reader, open_store(db_url, debounce=3600) as writer:
        session = await writer.sessions.create("appends")
        message = await writer.messages.create(
            session.id, role=Role.ASSISTANT, parts=[Text("x" * 65536)]
        )
        sub = reader.messages.subscribe(session_id=session.id)
        async with asyncio.timeout(WAIT):
            await reader._feed.activated()
        view = View()
        view.take(*(lambda m: (m.type, m.payload, None))(await _first_change(writer, sub, message)))
        with counting_row_decodes(monkeypatch) as decoded:
            for n in range(20):
                chunk = f" chunk {n:02d}"
                message.append_text(chunk)
                await writer.messages.update(message)
                await writer.messages.flush_all()
                async with asyncio.timeout(WAIT):
                    event = await sub.receive()
                assert event.delta is not None
                assert dict(event.delta.append) == {0: chunk}
                assert event.delta.base == view.messages[message.id].revision
                view.take(event.type, event.payload, event.delta)
        assert decoded == []
        assert view.missed == 0
        await check_views(writer, session.id, [view])
        sub.close()


async def _first_change(writer: Store, sub: Any, message: Message) -> Any:
    """Append once and return the event (read whole: the reader held nothing of it yet)."""
    message.append_text(" first")
    await writer.messages.update(message)
    await writer.messages.flush_all()
    async with asyncio.timeout(WAIT):
        return await sub.receive()


async def test_a_rewritten_row_is_read_whole_again(db_url: str) -> None:
    """A full write (here: a fold, the appends grown past the base) replaces the held state;
    the appends after it apply to the new base."""
    async with open_store(db_url) as reader, open_store(db_url, debounce=3600) as writer:
        session = await writer.sessions.create("folds")
        message = await writer.messages.create(session.id, role=Role.ASSISTANT)
        sub = reader.messages.subscribe(session_id=session.id)
        async with asyncio.timeout(WAIT):
            await reader._feed.activated()
        view = View()
        for n in range(60):
            message.append_text(f"{n:03d}" + "y" * 997)  # folds every 16 KB or so
            await writer.messages.update(message)
            await writer.messages.flush_all()
            async with asyncio.timeout(WAIT):
                event = await sub.receive()
            view.take(event.type, event.payload, event.delta)
            assert fields(view.messages[message.id]) == fields(event.payload)
        await check_views(writer, session.id, [view])
        assert view.missed == 0
        sub.close()


async def _random_history(store: Store, session_id: str, rng: random.Random, steps: int) -> None:
    """Interleaved random replies: text, reasoning, tool calls whose input grows, tool
    results, parts removed, large appends (folds), finishes and deletes."""
    live: list[Message] = []
    for _ in range(steps):
        roll = rng.random()
        if not live or roll < 0.08:
            live.append(await store.messages.create(session_id, role=Role.ASSISTANT, model="m"))
            continue
        message = rng.choice(live)
        if roll < 0.45:
            message.append_text(rng.choice(("a", "bc ", "défg ", "\n", "x" * rng.randrange(400))))
        elif roll < 0.55:
            message.append_reasoning(rng.choice(("think ", "hmm ")))
        elif roll < 0.62:
            message.finish_reasoning()
        elif roll < 0.72:
            calls = message.tool_calls
            if calls and not calls[-1].finished:
                call = calls[-1]
                grown = dataclasses.replace(
                    call, input=call.input + rng.choice(('{"a"', ":1", "}"))
                )
                if rng.random() < 0.2:
                    grown = dataclasses.replace(grown, finished=True)
                message.add_tool_call(grown)
            else:
                message.add_tool_call(ToolCall(f"c{rng.randrange(10**6)}", "run", ""))
        elif roll < 0.76:
            message.add_tool_result(ToolResult(f"c{rng.randrange(10**6)}", "run", "ok"))
        elif roll < 0.79:
            message.parts = message.parts[:-1]  # a part removed: no delta can say it
        elif roll < 0.82:
            message.append_text("z" * rng.randrange(8000, 20000))  # past a fold
        elif roll < 0.90:
            message.add_finish(FinishReason.END_TURN)
            await store.messages.update(message)
            live.remove(message)
            continue
        elif roll < 0.94:
            await store.messages.delete(message.id)
            live.remove(message)
            continue
        else:
            await store.messages.flush_all()
            continue
        await store.messages.update(message)
        if rng.random() < 0.3:
            await asyncio.sleep(0.002)
    for message in live:
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
    await store.messages.flush_all()


class ProtocolView(View):
    """A client by the wire rules: a delta whose base is not its copy's revision is not
    applied; it takes the payload whole instead (counted in ``missed``). A subscription
    that fell so far behind that it re-read from the database receives states whose later
    deltas may start elsewhere."""

    def take(self, event_type: EventType, payload: Message, delta: MessageDelta | None) -> None:
        copy = self.messages.get(payload.id)
        if delta is not None and copy is not None and delta.base != copy.revision:
            self.messages[payload.id] = payload.clone()
            self.missed += 1
            return
        super().take(event_type, payload, delta)


END = "-- end of the histories --"


async def _follow(sub: Any, view: View, delay: float) -> None:
    """Apply events as they come (sleeping ``delay`` after each: a slow reader) until the
    marker message written after every history arrives."""
    while True:
        event = await sub.receive()
        view.take(event.type, event.payload, event.delta)
        if event.payload.role is Role.USER and event.payload.text == END:
            return
        if delay:
            await asyncio.sleep(delay)


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_histories_of_another_store_and_the_readers_own(
    db_url: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer store and the reading store itself write at once; subscribers of the reading
    store (one fast, one with a buffer of 2 that reads slowly) apply the deltas they get."""
    async with (
        open_store(db_url, debounce=0.004) as reader,
        open_store(db_url, debounce=0.004) as writer,
    ):
        session = await writer.sessions.create("random")
        fast = reader.messages.subscribe(session_id=session.id)
        slow = reader.messages.subscribe(session_id=session.id, buffer_size=2)
        async with asyncio.timeout(WAIT):
            await reader._feed.activated()
        views = [ProtocolView(), ProtocolView()]
        with counting_row_decodes(monkeypatch) as decoded:
            written = asyncio.gather(
                _random_history(writer, session.id, random.Random(seed), 400),
                _random_history(reader, session.id, random.Random(seed + 100), 150),
            )
            following = [
                asyncio.ensure_future(_follow(sub, view, delay))
                for sub, view, delay in ((fast, views[0], 0.0), (slow, views[1], 0.003))
            ]
            try:
                await written
                await writer.messages.create(session.id, role=Role.USER, parts=[Text(END)])
                async with asyncio.timeout(WAIT):
                    await asyncio.gather(*following)
            finally:
                for task in following:
                    task.cancel()
                await asyncio.gather(*following, return_exceptions=True)
        await check_views(writer, session.id, views)
        assert views[0].applied > 0 and views[1].applied > 0
        # Rows decoded whole: far fewer than the changes the reader carried.
        assert len(decoded) < views[0].applied + views[0].whole
        fast.close()
        slow.close()


def test_read_states_start_over_when_a_read_starts_before_them() -> None:
    states = ReadStates()
    assert states.start(10) == 10  # nothing held yet
    message = Message("m", "s", Role.ASSISTANT, [Text("a")], revision=12)
    states.keep(1, 11, message)
    states.through = 12
    assert states.start(15) == 12  # catches up on 13..15 too
    assert 1 in states
    assert states.start(11) == 11  # before what is held: forgotten
    assert 1 not in states and states.through is None
    states.keep(1, 11, message)
    finished = Message("m", "s", Role.ASSISTANT, [Text("a")], revision=13)
    finished.add_finish(FinishReason.END_TURN)
    states.keep(1, 11, finished)
    assert 1 not in states


async def test_a_read_after_the_feeds_own_commits_starts_from_the_state_they_made(
    db_url: str,
) -> None:
    """The feed publishes its own store's commits without reading them, so the next read may
    start after changes the held states have not seen: they catch up on them first, and the
    delta starts at the state the feed published last."""
    async with open_store(db_url, debounce=3600) as store:
        states = ReadStates()
        session = await store.sessions.create("own")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        append = functools.partial(append_now, store, message)
        read = functools.partial(read_changes, store, states)

        first = await append("a")
        assert read_text(await read(0), message.id) == "a"
        second = await append("b")  # published by the feed at once: never read
        await append("c")
        changes = await read(second)
        change = changes[message.id]
        assert change.payload.text == "abc" and not change.terminal
        assert change.delta is not None
        assert (change.delta.base, dict(change.delta.append)) == (second, {0: "c"})
        assert change.delta.base > first
        fourth = await append("d")
        assert await read(fourth) == {}  # caught up on "d", nothing after it
        await append("e")
        change = (await read(fourth))[message.id]
        assert change.payload.text == "abcde"
        assert change.delta is not None and change.delta.base == fourth
        message.add_tool_call(ToolCall("call", "run", "{"))  # the row is written whole
        rewritten = await append("")
        await append("f")
        change = (await read(rewritten))[message.id]  # the held state is not on this row
        assert change.payload == (await store.messages.get(message.id))
        assert change.payload.text == "abcdef" and change.delta is None


async def append_now(store: Store, message: Message, text: str) -> int:
    """Append ``text`` to ``message``, write it now; the message's stored revision."""
    message.append_text(text)
    await store.messages.update(message)
    await store.messages.flush_all()
    return (await store.messages.get(message.id)).revision


async def read_changes(store: Store, held: ReadStates, after: int) -> dict[str, Any]:
    """One read of the feed's changes after ``after`` with the ``held`` states, by id."""
    page = await store._repository.read_changes(after, upto=None, limit=500, states=held)
    return {c.payload.id: c for c in page.changes}


def read_text(changes: dict[str, Any], message_id: str) -> str:
    payload: Message = changes[message_id].payload
    return payload.text


async def test_a_slow_subscriber_gets_another_stores_appends_as_one_merged_delta(
    db_url: str,
) -> None:
    """Appended changes read from another store are not terminal: a subscriber that does not
    keep up gets the ones it missed merged into one delta (appends concatenated), not every
    state and not a read-back from the database."""
    async with open_store(db_url) as reader, open_store(db_url, debounce=3600) as writer:
        session = await writer.sessions.create("slow")
        elsewhere = await writer.sessions.create("probe")
        message = await writer.messages.create(session.id, role=Role.ASSISTANT)
        slow = reader.messages.subscribe(session_id=session.id, buffer_size=1)
        probe = reader.messages.subscribe(session_id=elsewhere.id)
        async with asyncio.timeout(WAIT):
            await reader._feed.activated()

        async def commit(text: str) -> None:
            """Append and commit ``text``; return once the reader's feed has published it
            (a later commit elsewhere reached the probe: the feed publishes in order)."""
            message.append_text(text)
            await writer.messages.update(message)
            await writer.messages.flush_all()
            await writer.messages.create(elsewhere.id, role=Role.USER, parts=[Text(text)])
            async with asyncio.timeout(WAIT):
                while (await probe.receive()).payload.text != text:
                    pass

        await commit("Counting:")
        async with asyncio.timeout(WAIT):
            first = await slow.receive()
        for word in (" one", " two", " three", " four"):
            await commit(word)
        async with asyncio.timeout(WAIT):
            event = await slow.receive()
        assert slow.pending == 0
        assert event.payload.text == "Counting: one two three four"
        assert event.delta is not None
        assert event.delta.base == first.payload.revision
        assert dict(event.delta.append) == {0: " one two three four"}
        assert event.delta.apply(first.payload) == event.payload
        slow.close()
        probe.close()


async def test_appends_that_do_not_fit_the_held_state_are_read_whole_not_lost(
    db_url: str,
) -> None:
    """A held state the appends do not fit (here: damaged by hand, its part gone) is never
    applied to: the message is read from its row, and the change is reported, not skipped."""
    async with open_store(db_url, debounce=3600) as store:
        states = ReadStates()
        session = await store.sessions.create("misfit")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        append = functools.partial(append_now, store, message)
        read = functools.partial(read_changes, store, states)

        first = await append("a")
        assert read_text(await read(0), message.id) == "a"
        seq = await store.transaction(
            lambda tx: tx.conn.execute(
                text("SELECT seq FROM messages WHERE id = :id"), {"id": message.id}
            ).scalar_one(),
            write=False,
        )
        held = states.get(seq)
        assert held is not None and held.message.text == "a"
        damaged = Message(message.id, session.id, Role.ASSISTANT, [], revision=first)
        states.keep(seq, held.base, damaged)
        await append("b")
        change = (await read(first))[message.id]
        assert change.payload == await store.messages.get(message.id)
        assert change.payload.text == "ab" and change.delta is None
        assert states.get(seq) is not None and states.get(seq).message.text == "ab"  # type: ignore[union-attr]
