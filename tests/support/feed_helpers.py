"""What the change-feed tests share: a ledger of received events and its checks, the database's
own view of every message (stored revision or tombstone), and a small streaming workload.

The ledger check is the one definition of "no gap, no duplicate, late but never stale" that
every feed test (in-process, across processes, across kills) holds a subscriber to:

* no (message id, revision) pair was received twice, by any incarnation of the subscriber;
* one message's revisions strictly increase, and nothing follows its ``DELETED``;
* every message that exists ends on its stored revision (not ``DELETED``), and every deleted
  one ends on ``DELETED`` at its tombstone's revision; nothing else was received.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import FeedSubscription, FinishReason, Message, Role, Store, ToolCall, ToolResult
from pubsub import EventType

WAIT = 30.0  # upper bound for anything expected to happen


@dataclass(frozen=True, slots=True)
class Received:
    """One event as a subscriber received it."""

    message_id: str
    revision: int
    type: EventType


@dataclass(frozen=True, slots=True)
class Truth:
    """The database's view: each message's stored revision, each tombstone's revision."""

    stored: dict[str, int]
    deleted: dict[str, int]
    counter: int


async def database_truth(url: str, session_id: str | None = None) -> Truth:
    """Read messages, message tombstones and the counter straight from the tables."""
    engine = create_async_engine(url)
    scope = "" if session_id is None else " WHERE session_id = :sid"
    params = {} if session_id is None else {"sid": session_id}
    try:
        async with engine.connect() as conn:
            stored = dict(
                (
                    await conn.execute(text(f"SELECT id, revision FROM messages{scope}"), params)
                ).all()
            )
            stones = "SELECT id, revision FROM tombstones WHERE kind = 'message'" + (
                "" if session_id is None else " AND session_id = :sid"
            )
            deleted = dict((await conn.execute(text(stones), params)).all())
            counter = (await conn.execute(text("SELECT revision FROM feed_state"))).scalar_one()
    finally:
        await engine.dispose()
    return Truth(stored, deleted, counter)


def check_ledger(received: list[Received], truth: Truth) -> None:
    """Assert the ledger rules of the module docstring (received in arrival order)."""
    twice = [
        pair for pair, n in Counter((r.message_id, r.revision) for r in received).items() if n > 1
    ]
    assert twice == [], f"state delivered twice: {twice[:5]}"
    last: dict[str, Received] = {}
    for event in received:
        before = last.get(event.message_id)
        if before is not None:
            assert before.type is not EventType.DELETED, f"{event} after {before}"
            assert event.revision > before.revision, f"{event} went back from {before}"
        last[event.message_id] = event
    for message_id, revision in truth.stored.items():
        seen = last.get(message_id)
        assert seen is not None, f"message {message_id} (revision {revision}) never received"
        assert seen.type is not EventType.DELETED, f"{message_id} exists but ended on {seen}"
        assert seen.revision == revision, f"{message_id} stored at {revision}, ended on {seen}"
    for message_id, revision in truth.deleted.items():
        seen = last.get(message_id)
        assert seen is not None, f"deleted message {message_id} never received"
        assert seen.type is EventType.DELETED, f"{message_id} was deleted, ended on {seen}"
        assert seen.revision == revision, f"{message_id} deleted at {revision}, ended on {seen}"
    extra = set(last) - set(truth.stored) - set(truth.deleted)
    assert extra == set(), f"received messages the database never had: {sorted(extra)[:5]}"


@dataclass
class Ledger:
    """Everything one or more subscriptions received, with the payloads of the last events."""

    received: list[Received] = field(default_factory=list)
    last: dict[str, Message] = field(default_factory=dict)

    def add(self, event_type: EventType, message: Message) -> None:
        self.received.append(Received(message.id, message.revision, event_type))
        self.last[message.id] = message


async def follow(
    sub: FeedSubscription[Message], ledger: Ledger, *, until: int, delay: float = 0.0
) -> None:
    """Receive into ``ledger`` until an event at revision ``until`` or later arrived (bounded),
    sleeping ``delay`` between reads (a slow UI)."""
    if any(r.revision >= until for r in ledger.received):
        return
    async with asyncio.timeout(WAIT):
        while True:
            event = await sub.receive()
            ledger.add(event.type, event.payload)
            if event.payload.revision >= until:
                return
            if delay:
                await asyncio.sleep(delay)


async def stream(
    store: Store,
    session_id: str,
    *,
    messages: int,
    deltas: int,
    rng: random.Random,
    delete_every: int = 0,
    pause: float = 0.001,
) -> list[str]:
    """Stream ``messages`` assistant replies of ``deltas`` text deltas each, in turn; every
    third gets a finished tool call and a tool message answering it, each gets a finish;
    every ``delete_every``-th is deleted after finishing (or, at random, mid-stream). Returns
    the ids created."""
    ids: list[str] = []
    for n in range(messages):
        message = await store.messages.create(session_id, role=Role.ASSISTANT, model="m")
        ids.append(message.id)
        doomed = delete_every > 0 and n % delete_every == delete_every - 1
        cut = rng.randrange(deltas) if doomed and rng.random() < 0.5 else None
        for i in range(deltas):
            if cut == i:
                break
            message.append_text(f"[{n}.{i}] ")
            await store.messages.update(message)
            await asyncio.sleep(pause * rng.random())
        if cut is None and n % 3 == 1:  # a tool turn, answered (recovery finds nothing to do)
            call = ToolCall(f"call-{message.id}", "run", "{}", finished=True)
            message.add_tool_call(call)
            await store.messages.update(message)
            message.add_finish(FinishReason.TOOL_USE)
            await store.messages.update(message)
            result = ToolResult(call.id, "run", f"result {n}")
            ids.append((await store.messages.create(session_id, role=Role.TOOL, parts=[result])).id)
        elif cut is None:
            message.add_finish(FinishReason.END_TURN)
            await store.messages.update(message)
        if doomed:
            await store.messages.delete(message.id)
    return ids
