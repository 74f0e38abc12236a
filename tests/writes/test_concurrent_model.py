"""The concurrent model test: several tasks drive one store the way a busy backend does.

A seeded scheduler runs a random program on each backend. Three actor tasks stream, finish,
flush, delete, recover and create at once, and a random share of their calls is cancelled at a
random point. Four subscribers watch: one with a one-event buffer that is never read until the
end, one with a two-event buffer read slowly, one read promptly, and one scoped to a session.
A store that closed with messages still streaming (its lease ended) leaves work for
``recover()``. A model records what the program did, in call order.

After each program:

* the database equals the model: every live message holds its last accepted state, every
  deleted one (and every message of a deleted session) is gone, a recovered message is
  finished ``INTERRUPTED``, a cancelled ``create()`` left exactly its row, no row is
  unaccounted for, each session's ``message_count`` equals its rows;
* every subscriber's last event of each message equals the database (``DELETED`` for a
  deleted one), no event follows ``DELETED``, a message's revisions only increase, and no
  subscriber lost an event for good;
* the counters add up: ``updates_accepted`` equals the accepted updates; the broker's
  ``delivered + conflated + dropped + must_deliver_dropped`` equals the (event, subscriber)
  pairs published; no write failed;
* after ``close()``: no task and no database thread is left, no connection holds a lock.

CI runs a few short programs per backend. The long variant runs many longer ones (random
seeds; ``MESSAGESTORE_MODEL_OPS`` calls per actor, default 80)::

    MESSAGESTORE_SOAK_SEEDS=300 pytest -m soak tests/writes/test_concurrent_model.py -x

A failure prints the command that runs its program again (``MESSAGESTORE_MODEL_SEED`` and
``MESSAGESTORE_MODEL_OPS``). The seed fixes every random choice; the interleaving still
depends on the machine's timing, so a race may take a few runs to show again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest

from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    MessageNotFound,
    Role,
    SessionNotFound,
    Store,
    Text,
    ToolCall,
)
from messagestore._changes import Change, Kind
from messagestore._store import StoreOptions, open_store_with
from messagestore.testing import set_must_deliver_timeout
from pubsub import Event, EventType, SubscriptionEnded
from tests.support.races import admin_query, assert_no_write_lock_held

ACTORS = 3
CI_SEEDS = (11, 12, 13, 14, 15)
CI_OPS = 40  # per actor
SOAK_SEEDS = int(os.environ.get("MESSAGESTORE_SOAK_SEEDS", "100"))
REPLAY_SEED = os.environ.get("MESSAGESTORE_MODEL_SEED")
OPS = os.environ.get("MESSAGESTORE_MODEL_OPS")
CANCEL_SHARE = 0.25
WAIT = 30.0


@dataclass
class Tracked:
    """One message as the model sees it."""

    session_id: str
    created: int  # the model's clock when its create was called (0: before the program)
    accepted: Message | None  # the last accepted state (None: only its creation is known)
    working: Message | None = None  # the owning actor's object (None: nobody updates it)
    owner: int | None = None
    dead_text: str | None = None  # left streaming by an ended store: recovery finishes it
    delete_called: bool = False
    finished: bool = False


@dataclass
class Model:
    """What the program did, in call order.

    One store runs its write jobs in the order they were submitted, and every call submits
    its job in the step that makes the call: so a delete of a session's messages removes
    exactly the messages whose create was called before it. ``clock`` orders the calls.
    """

    messages: dict[str, Tracked] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # id -> last saved title
    deleted_sessions: set[str] = field(default_factory=set)
    wipes: list[tuple[int, str]] = field(default_factory=list)  # (clock, session id)
    orphans: dict[str, tuple[str, int]] = field(default_factory=dict)  # marker -> (sid, clock)
    updates_accepted: int = 0
    clock: int = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def wiped(self, session_id: str, created: int) -> bool:
        """True if the session's messages were deleted after a create called at ``created``."""
        return any(sid == session_id and at > created for at, sid in self.wipes)

    def deleted(self, message_id: str) -> bool:
        tracked = self.messages[message_id]
        return tracked.delete_called or self.wiped(tracked.session_id, tracked.created)


class FanOut:
    """Counts the (event, subscriber) pairs the feed publishes to the message broker."""

    def __init__(self, store: Store, wildcard: int, scoped: str) -> None:
        self.pairs = 0
        feed = store._feed
        real = feed._publish

        def publish(change: Change) -> Any:
            if change.kind is Kind.MESSAGE:
                payload = change.payload
                assert isinstance(payload, Message)
                self.pairs += wildcard + (payload.session_id == scoped)
            return real(change)

        feed._publish = publish  # type: ignore[method-assign]


class Program:
    """One seeded program against one store."""

    def __init__(self, store: Store, seed: int, ops: int, sessions: list[str]) -> None:
        self.store = store
        self.seed = seed
        self.ops = ops
        self.sessions = sessions  # sessions actors create in (the first is never deleted)
        self.model = Model(sessions=dict.fromkeys(sessions, ""))
        self.session_deletes = 0

    # -- the scheduler ---------------------------------------------------------------------------

    async def run(self) -> None:
        actors = [self.actor(n, random.Random(f"{self.seed}-{n}")) for n in range(ACTORS)]
        await asyncio.gather(*actors)

    async def actor(self, n: int, rng: random.Random) -> None:
        for _ in range(self.ops):
            call = self.choose(n, rng)
            task = asyncio.ensure_future(call)
            if rng.random() < CANCEL_SHARE:
                await pause(rng)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(WAIT):
                    await task
            await pause(rng)

    def choose(self, n: int, rng: random.Random) -> Awaitable[None]:
        model = self.model
        mine = [
            (mid, t)
            for mid, t in model.messages.items()
            if t.owner == n and not model.deleted(mid) and t.working is not None
        ]
        streaming = [(mid, t) for mid, t in mine if not t.finished]
        others = [mid for mid in model.messages if not model.deleted(mid)]
        roll = rng.random()
        if not streaming or roll < 0.12:
            return self.create(n, rng)
        if roll < 0.55:
            return self.stream(rng.choice(streaming)[1], rng)
        if roll < 0.70:
            return self.terminal(rng.choice(streaming)[1], rng)
        if roll < 0.74:
            return self.change_stored_fields(rng.choice(mine)[1], rng)
        if roll < 0.78:
            return self.change_immutable_field(rng.choice(mine)[1], rng)
        if roll < 0.84:
            return self.flush(rng.choice(mine)[0])
        if roll < 0.88:
            return self.flush_all()
        if roll < 0.93 and others:
            return self.delete(rng.choice(others))
        if roll < 0.95:
            return self.recover()
        if roll < 0.97:
            return self.save_session(rng.choice(self.sessions), rng)
        if roll < 0.985 and self.session_deletes == 0:
            self.session_deletes += 1
            return self.delete_session(rng.choice(self.sessions[1:]))
        if self.session_deletes < 2:
            self.session_deletes += 1
            return self.delete_session_messages(rng.choice(self.sessions[1:]))
        return self.flush_all()

    # -- operations: each records in the model in the same step as the call --------------------

    async def create(self, n: int, rng: random.Random) -> None:
        model = self.model
        created = model.tick()
        session_id = rng.choice(self.sessions)
        marker = f"created {created}"
        model.orphans[marker] = (session_id, created)  # until the caller gets its object
        try:
            message = await self.store.messages.create(
                session_id, role=Role.ASSISTANT, parts=[Text(marker)]
            )
        except SessionNotFound:
            assert session_id in model.deleted_sessions, "SessionNotFound for a live session"
            del model.orphans[marker]
            return
        del model.orphans[marker]
        model.messages[message.id] = Tracked(session_id, created, message.clone(), message, n)

    async def update(self, tracked: Tracked) -> None:
        """Hand the working object to ``update()``; record it as accepted unless refused."""
        message = tracked.working
        assert message is not None
        state = message.clone()
        try:
            await self.store.messages.update(message)
        except MessageNotFound:
            assert self.model.deleted(message.id), f"update() of live {message.id}: not found"
            return
        except asyncio.CancelledError:
            self.accepted(tracked, state)  # it was accepted before the first await
            raise
        self.accepted(tracked, state)

    def accepted(self, tracked: Tracked, state: Message) -> None:
        tracked.accepted = state
        tracked.finished = state.is_finished
        self.model.updates_accepted += 1

    async def stream(self, tracked: Tracked, rng: random.Random) -> None:
        message = tracked.working
        assert message is not None
        if rng.random() < 0.2:
            message.append_reasoning(f"<think {rng.randrange(100)}>")
        else:
            message.append_text(f"<{rng.randrange(1000)}>")
        await self.update(tracked)

    async def terminal(self, tracked: Tracked, rng: random.Random) -> None:
        message = tracked.working
        assert message is not None
        roll = rng.random()
        calls = message.tool_calls
        if roll < 0.3:
            message.add_tool_call(ToolCall(f"call-{self.model.tick()}", "tool", "{"))
        elif roll < 0.5 and calls:
            call = calls[-1]
            message.add_tool_call(ToolCall(call.id, call.name, call.input + "}", finished=True))
        elif roll < 0.6 and message.reasoning is not None:
            message.finish_reasoning()
        else:
            message.add_finish(rng.choice([FinishReason.END_TURN, FinishReason.TOOL_USE]))
        await self.update(tracked)

    async def change_stored_fields(self, tracked: Tracked, rng: random.Random) -> None:
        message = tracked.working
        assert message is not None
        field_name = rng.choice(["model", "provider", "is_summary_message"])
        if field_name == "is_summary_message":
            message.is_summary_message = not message.is_summary_message
        else:
            setattr(message, field_name, f"{field_name}-{rng.randrange(100)}")
        await self.update(tracked)

    async def change_immutable_field(self, tracked: Tracked, rng: random.Random) -> None:
        message = tracked.working
        assert message is not None
        changed = message.clone()
        field_name = rng.choice(["role", "session_id"])
        if field_name == "role":
            changed.role = Role.USER
        else:
            changed.session_id = next(s for s in self.sessions if s != message.session_id)
        try:
            await self.store.messages.update(changed)
        except InvalidMessage:
            return
        except MessageNotFound:
            assert self.model.deleted(message.id), f"update() of live {message.id}: not found"
            return
        raise AssertionError(f"update() accepted a changed {field_name} of {message.id}")

    async def flush(self, message_id: str) -> None:
        await self.store.messages.flush(message_id)

    async def flush_all(self) -> None:
        await self.store.messages.flush_all()

    async def delete(self, message_id: str) -> None:
        self.model.messages[message_id].delete_called = True
        with contextlib.suppress(MessageNotFound):  # deleted meanwhile, with its session
            await self.store.messages.delete(message_id)

    async def recover(self) -> None:
        await self.store.recover()

    async def save_session(self, session_id: str, rng: random.Random) -> None:
        title = f"title {rng.randrange(1000)}"
        try:
            session = await self.store.sessions.get(session_id)
        except SessionNotFound:
            assert session_id in self.model.deleted_sessions
            return
        session.title = title
        self.model.sessions[session_id] = title  # the last save called is the last committed
        with contextlib.suppress(SessionNotFound):
            await self.store.sessions.save(session)

    async def delete_session(self, session_id: str) -> None:
        self.model.deleted_sessions.add(session_id)
        self.model.wipes.append((self.model.tick(), session_id))
        with contextlib.suppress(SessionNotFound):
            await self.store.sessions.delete(session_id)

    async def delete_session_messages(self, session_id: str) -> None:
        self.model.wipes.append((self.model.tick(), session_id))
        await self.store.messages.delete_session_messages(session_id)


async def pause(rng: random.Random) -> None:
    """A random point: some loop turns, or a short real pause."""
    roll = rng.random()
    if roll < 0.6:
        for _ in range(rng.randrange(0, 8)):
            await asyncio.sleep(0)
    elif roll < 0.9:
        await asyncio.sleep(rng.uniform(0, 0.003))


# -- subscribers ---------------------------------------------------------------------------------


class Reader:
    """A subscription and what it received; read promptly, slowly, or only at the end."""

    def __init__(self, name: str, sub: Any, scope: str | None) -> None:
        self.name = name
        self.sub = sub
        self.scope = scope
        self.events: list[Event[Message]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self, rng: random.Random | None) -> None:
        self.task = asyncio.ensure_future(self._read(rng))

    async def _read(self, rng: random.Random | None) -> None:
        while True:
            try:
                event = await self.sub.receive()
            except SubscriptionEnded:
                return
            self.events.append(event)
            if rng is not None:
                await pause(rng)

    async def finish(self) -> None:
        """After the store closed: the subscription ends once drained."""
        async with asyncio.timeout(WAIT):
            if self.task is None:
                self.events += [event async for event in self.sub]
            else:
                await self.task
        self.sub.close()


# -- one program -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[Store]:
    async with open_store_with(url, StoreOptions(**options)) as store:
        yield store


async def leave_streaming(url: str, count: int) -> tuple[str, dict[str, str]]:
    """A store that closes with ``count`` messages streaming: (session, {id: text})."""
    async with opened(url) as gone:
        session = await gone.sessions.create("left streaming")
        left: dict[str, str] = {}
        for n in range(count):
            message = await gone.messages.create(session.id, role=Role.ASSISTANT)
            message.append_text(f"half an answer {n}")
            await gone.messages.update(message)
            left[message.id] = message.text
    return session.id, left


async def run_program(url: str, seed: int, ops: int) -> None:
    rng = random.Random(seed)
    debounce = rng.choice([0.0, 0.002, 0.01, 0.033])
    threads_before = {t.ident for t in threading.enumerate()}
    tasks_before = asyncio.all_tasks()
    store = await open_store_with(url, StoreOptions(debounce=debounce))
    readers: list[Reader] = []
    try:
        set_must_deliver_timeout(store, rng.choice([0.002, 0.01, 0.05]))
        sessions = [(await store.sessions.create(f"session {n}")).id for n in range(3)]
        readers = [
            Reader("stuck", store.messages.subscribe(buffer_size=1), None),
            Reader("slow", store.messages.subscribe(buffer_size=2), None),
            Reader("prompt", store.messages.subscribe(), None),
            Reader(
                "scoped",
                store.messages.subscribe(buffer_size=2, session_id=sessions[0]),
                sessions[0],
            ),
        ]
        fan_out = FanOut(store, wildcard=3, scoped=sessions[0])
        readers[1].start(random.Random(f"{seed}-slow"))
        readers[2].start(None)
        readers[3].start(random.Random(f"{seed}-scoped"))
        dead_session, dead = await leave_streaming(url, 3)
        program = Program(store, seed, ops, [*sessions, dead_session])
        for message_id, text in dead.items():
            program.model.messages[message_id] = Tracked(dead_session, 0, None, dead_text=text)
        await program.run()
        async with asyncio.timeout(WAIT):
            await store.recover()  # whatever the program's own recover() calls left
            await store.messages.flush_all()
            snapshot = await store.messages.snapshot()
            stored_sessions = {s.id: s for s in await store.sessions.list()}
        stats = store.messages.stats()
        lost = {reader.name: reader.sub._live.lost for reader in readers}
    finally:
        async with asyncio.timeout(WAIT):
            await store.close()
        for reader in readers:
            await reader.finish()
    model = program.model
    mine = set(program.sessions)  # a soak run shares one database between programs
    rows = {m.id: m for m in snapshot.messages if m.session_id in mine}
    stored_sessions = {sid: s for sid, s in stored_sessions.items() if sid in mine}
    check_database(model, rows, stored_sessions)
    for reader in readers:
        check_events(reader, model, rows)
    assert lost == {reader.name: 0 for reader in readers}, f"events lost for good: {lost}"
    accepted = model.updates_accepted
    assert stats.updates_accepted == accepted, (stats.updates_accepted, accepted)
    assert (stats.write_failures, stats.pending_messages) == (0, 0), stats
    broker = store.messages.stats().broker
    pairs = broker.delivered + broker.conflated + broker.dropped + broker.must_deliver_dropped
    assert pairs == fan_out.pairs, (broker, fan_out.pairs)
    left = asyncio.all_tasks() - tasks_before
    assert not left, f"tasks left after close: {left}"
    threads = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert not threads, f"threads left after close: {threads}"
    await assert_no_write_lock_held(url)
    if not url.startswith("sqlite"):
        connected = await admin_query(
            url,
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert connected == [], f"connections left after close: {connected}"


def check_database(model: Model, rows: dict[str, Message], sessions: dict[str, Any]) -> None:
    assert set(sessions) == set(model.sessions) - model.deleted_sessions
    for session_id, session in sessions.items():
        if model.sessions.get(session_id):
            assert session.title == model.sessions[session_id], session_id
        count = sum(1 for m in rows.values() if m.session_id == session_id)
        assert session.message_count == count, (session_id, session.message_count, count)
    accounted: set[str] = set()
    for message_id, tracked in model.messages.items():
        row = rows.get(message_id)
        if model.deleted(message_id):
            assert row is None, f"deleted message {message_id} is still stored"
            continue
        assert row is not None, f"live message {message_id} is gone"
        accounted.add(message_id)
        if tracked.dead_text is not None:
            assert row.text == tracked.dead_text
            assert row.finish is not None and row.finish.reason is FinishReason.INTERRUPTED
            continue
        want = tracked.accepted
        assert want is not None
        got = (row.parts, row.model, row.provider, row.is_summary_message, row.role)
        assert got == (want.parts, want.model, want.provider, want.is_summary_message, want.role)
        assert (row.session_id, row.created_at) == (want.session_id, want.created_at)
    by_marker = {m.text: m for m in rows.values() if m.id not in accounted}
    for marker, (session_id, created) in model.orphans.items():
        orphan = by_marker.pop(marker, None)
        if session_id in model.deleted_sessions or model.wiped(session_id, created):
            assert orphan is None, f"the row of a cancelled create ({marker}) survived a delete"
        else:
            assert orphan is not None, f"the row of a cancelled create ({marker}) is missing"
    assert not by_marker, f"rows nobody created: {sorted(by_marker)}"


def check_events(reader: Reader, model: Model, rows: dict[str, Message]) -> None:
    name = reader.name
    last: dict[str, Event[Message]] = {}
    revision: dict[str, int] = {}
    for event in reader.events:
        message = event.payload
        if reader.scope is not None:
            assert message.session_id == reader.scope, f"{name}: event of another session"
        previous = last.get(message.id)
        assert previous is None or previous.type is not EventType.DELETED, (
            f"{name}: {event.type} after DELETED of {message.id}"
        )
        assert message.revision > revision.get(message.id, 0), f"{name}: revision went back"
        revision[message.id] = message.revision
        last[message.id] = event
    sessions = {mid: t.session_id for mid, t in model.messages.items()}
    sessions.update((mid, m.session_id) for mid, m in rows.items())
    for message_id, session_id in sessions.items():
        if reader.scope is not None and session_id != reader.scope:
            continue
        final = last.get(message_id)
        row = rows.get(message_id)
        if row is None:
            # Created (or left streaming) after the subscription started, then deleted: the
            # subscriber ends on DELETED. (A cancelled create's row is not in the model.)
            if message_id in model.messages:
                assert final is not None, f"{name}: no event for deleted {message_id}"
            if final is not None:
                assert final.type is EventType.DELETED, f"{name}: {message_id} ended {final.type}"
            continue
        assert final is not None, f"{name}: no event for stored message {message_id}"
        assert final.type is not EventType.DELETED, f"{name}: {message_id} ended DELETED"
        assert final.payload == row, f"{name}: last event of {message_id} is not the row"
        assert final.payload.revision == row.revision, f"{name}: {message_id} revision"


async def run_seed(url: str, seed: int, ops: int) -> None:
    try:
        await run_program(url, seed, ops)
    except BaseException:
        backend = "sqlite" if url.startswith("sqlite") else "postgres"
        print(
            f"\nmodel test failed: seed={seed} ops={ops}; run it again with "
            f"MESSAGESTORE_MODEL_SEED={seed} MESSAGESTORE_MODEL_OPS={ops} "
            f"pytest tests/writes/test_concurrent_model.py -k {backend}"
        )
        raise


@pytest.mark.parametrize("seed", (int(REPLAY_SEED),) if REPLAY_SEED else CI_SEEDS)
async def test_concurrent_programs_keep_every_promise(db_url: str, seed: int) -> None:
    await run_seed(db_url, seed, int(OPS) if OPS else CI_OPS)


@pytest.mark.soak
async def test_concurrent_programs_soak(db_url: str) -> None:
    base = random.Random().randrange(1_000_000)
    for seed in range(base, base + SOAK_SEEDS):
        await run_seed(db_url, seed, int(OPS) if OPS else 80)
