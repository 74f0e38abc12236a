"""Every wait ends: every public awaitable of the store, its feed subscription, the dispatcher
and the blocking twin completes or raises an expected error within a bound, under each fault,
on SQLite and PostgreSQL.

The faults: a database job that fails, a job that stalls (ended by a short job deadline),
subscriptions closed from another thread while another store writes, a peer OS process that
deleted the session and the message the calls use, and a feed that fell behind the compacted
history. The table names every public coroutine method (and the blocking twin's methods);
``test_the_table_names_every_public_awaitable`` walks the public classes and fails when one
is added without an entry here, so the class of "a wait without an end" stays covered.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import text

import messagestore.sync
from messagestore import (
    DatabaseTimeout,
    FeedSubscription,
    FinishReason,
    Message,
    MessageService,
    MessageStoreError,
    Role,
    SessionService,
    Store,
    Tx,
    open_store,
)
from messagestore.dispatch import Dispatcher, QueueConfig, Receipt, Turn
from messagestore.sync import SyncMessageService, SyncSessionService, SyncStore, SyncSubscription
from messagestore.testing import faults
from pubsub import SubscriptionEnded
from tests.feed.test_waits import FeedReads, _prune_elsewhere
from tests.support.processes import Processes

JOB_TIMEOUT = 0.25
BOUND = 8.0  # each call: its own deadline is JOB_TIMEOUT; the machine is shared
FAULTS = ["fail", "stall", "thread", "peer", "compaction"]

ASYNC_CLASSES: list[type] = [
    Store,
    SessionService,
    MessageService,
    FeedSubscription,
    Dispatcher,
    Receipt,
    Turn,
]
SYNC_CLASSES: list[type] = [SyncStore, SyncSessionService, SyncMessageService, SyncSubscription]
_DUNDER_ASYNC = {"__aenter__", "__aexit__", "__anext__"}
_DUNDER_SYNC = {"__enter__", "__exit__", "__next__"}


def public_awaitables() -> set[str]:
    """``Class.method`` for every public coroutine method of the asyncio classes, and every
    public method of the blocking twin's classes (each may block)."""
    names = set()
    for cls in ASYNC_CLASSES:
        for name, value in inspect.getmembers(cls):
            if name.startswith("_") and name not in _DUNDER_ASYNC:
                continue
            if inspect.iscoroutinefunction(value):
                names.add(f"{cls.__name__}.{name}")
    for cls in SYNC_CLASSES:
        for name, value in inspect.getmembers(cls):
            if name.startswith("_") and name not in _DUNDER_SYNC:
                continue
            if isinstance(inspect.getattr_static(cls, name), property) or not callable(value):
                continue
            names.add(f"{cls.__name__}.{name}")
    return names


# -- the context every call runs in ------------------------------------------------------------


@dataclass
class Ctx:
    """What the calls use: a store with a session, a message, a dispatcher; its twin."""

    store: Store
    session_id: str
    message: Message
    dispatcher: Dispatcher
    spare: Dispatcher  # for ``async with``
    sync: SyncStore
    sync_session_id: str
    hangs: list[str] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)


async def run_turn_for(ctx_box: list[Ctx]) -> Callable[[Turn], Awaitable[None]]:
    async def run_turn(turn: Turn) -> None:
        ctx = ctx_box[0]
        try:
            async with asyncio.timeout(BOUND):
                await turn.steering()
                reply = await turn.reply()
                reply.append_text("ok")
                reply.add_finish(FinishReason.END_TURN)
                await ctx.store.messages.update(reply)
        except TimeoutError as exc:
            if not isinstance(exc, DatabaseTimeout):
                ctx.hangs.append(f"run_turn (Turn.reply / Turn.steering) in {turn.session_id}")
            raise

    return run_turn


Call = Callable[[Ctx], Awaitable[object]]
Prepare = Callable[[Ctx], Awaitable[None]]


@dataclass
class Entry:
    """One call of the table: ``prepare`` runs before the fault is armed, ``call`` under it.
    ``covers`` names the public methods it exercises."""

    covers: tuple[str, ...]
    call: Call
    prepare: Prepare | None = None
    sync: bool = False


def _select_one(tx: Tx) -> int:
    return int(tx.conn.execute(text("SELECT 1")).scalar_one())


def _touch(tx: Tx) -> None:
    tx.conn.execute(text("UPDATE sessions SET title = title WHERE id = 'none'"))


async def _new_message(ctx: Ctx) -> None:
    ctx.scratch["message"] = await ctx.store.messages.create(ctx.session_id, role=Role.ASSISTANT)


async def _new_session(ctx: Ctx) -> None:
    ctx.scratch["session"] = await ctx.store.sessions.create("scratch")


async def _replaying_subscription(ctx: Ctx) -> None:
    # since=0: the replay holds at least the setup's changes, so an event (or an error) comes.
    ctx.scratch["sub"] = ctx.store.messages.subscribe(since=0)


async def _receipt(ctx: Ctx) -> None:
    ctx.scratch["receipt"] = await ctx.dispatcher.submit(ctx.session_id, "hello")


async def _update(ctx: Ctx) -> None:
    message = ctx.message.clone()
    message.append_text("more")
    await ctx.store.messages.update(message)


async def _terminal_update(ctx: Ctx) -> None:
    message: Message = ctx.scratch["message"]
    message.append_text("done")
    message.add_finish(FinishReason.END_TURN)
    await ctx.store.messages.update(message)


async def _update_with(ctx: Ctx) -> None:
    message: Message = ctx.scratch["message"]
    message.append_text("done")
    message.add_finish(FinishReason.END_TURN)
    await ctx.store.messages.update_with([message], _touch)


async def _save(ctx: Ctx) -> None:
    session = ctx.scratch["session"]
    session.title = "renamed"
    await ctx.store.sessions.save(session)


async def _anext(ctx: Ctx) -> None:
    sub: FeedSubscription[Message] = ctx.scratch["sub"]
    try:
        await sub.__anext__()
    except StopAsyncIteration:
        pass
    finally:
        sub.close()


async def _receive(ctx: Ctx) -> None:
    sub: FeedSubscription[Message] = ctx.scratch["sub"]
    try:
        await sub.receive()
    finally:
        sub.close()


async def _sub_context(ctx: Ctx) -> None:
    async with ctx.store.messages.subscribe() as sub:
        assert sub is not None


async def _spare_context(ctx: Ctx) -> None:
    async with ctx.spare:
        await ctx.spare.submit(ctx.session_id, "spare")


async def _outcome(ctx: Ctx) -> None:
    receipt: Receipt = ctx.scratch["receipt"]
    await receipt.outcome()


async def _wait_resolved(ctx: Ctx) -> None:
    receipt: Receipt = ctx.scratch["receipt"]
    await receipt.wait_resolved(0.5)


async def _store_context(ctx: Ctx) -> None:
    assert await ctx.store.__aenter__() is ctx.store


# Blocking calls: run in a thread of their own (``asyncio.to_thread``) under the bound.


def _sync_call(fn: Callable[[Ctx], object]) -> Call:
    async def call(ctx: Ctx) -> object:
        return await asyncio.to_thread(fn, ctx)

    return call


def _s_sub_get(ctx: Ctx) -> None:
    with ctx.sync.messages.subscribe(since=0) as sub:
        sub.get()  # the replay holds the setup's changes: bounded by the call's bound


def _s_sub_next(ctx: Ctx) -> None:
    sub = ctx.sync.messages.subscribe(since=0)
    try:
        next(sub)
    except StopIteration:
        pass
    finally:
        sub.close()


def _s_sub_drain(ctx: Ctx) -> None:
    sub = ctx.sync.sessions.subscribe(since=0)
    sub.drain()
    sub.close()


def _s_session_roundtrip(ctx: Ctx) -> None:
    session = ctx.sync.sessions.create("sync scratch")
    session.title = "renamed"
    ctx.sync.sessions.save(session)
    ctx.sync.sessions.delete(session.id)


def _s_messages(ctx: Ctx) -> None:
    message = ctx.sync.messages.create(ctx.sync_session_id, role=Role.ASSISTANT)
    message.append_text("x")
    ctx.sync.messages.update(message)
    ctx.sync.messages.flush(message.id)
    ctx.sync.messages.flush_all()
    ctx.sync.messages.get(message.id)
    ctx.sync.messages.delete(message.id)


def _s_create_in(ctx: Ctx) -> None:
    def job(tx: Tx) -> None:
        ctx.sync.messages.create_in(tx, ctx.sync_session_id, role=Role.USER)

    ctx.sync.transaction(job)


def _s_update_with(ctx: Ctx) -> None:
    message = ctx.sync.messages.create(ctx.sync_session_id, role=Role.ASSISTANT)
    message.add_finish(FinishReason.END_TURN)
    ctx.sync.messages.update_with([message], _touch)


def _s_delete_session_messages(ctx: Ctx) -> None:
    ctx.sync.messages.delete_session_messages("no such session")


TABLE: list[Entry] = [
    Entry(("Store.__aenter__",), _store_context),
    Entry(("Store.transaction",), lambda c: c.store.transaction(_select_one, write=False)),
    Entry(("Store.transaction",), lambda c: c.store.transaction(_touch)),
    Entry(("Store.recover",), lambda c: c.store.recover()),
    Entry(("SessionService.create",), lambda c: c.store.sessions.create("new")),
    Entry(("SessionService.get",), lambda c: c.store.sessions.get(c.session_id)),
    Entry(("SessionService.list",), lambda c: c.store.sessions.list()),
    Entry(("SessionService.save",), _save, _new_session),
    Entry(
        ("SessionService.delete",),
        lambda c: c.store.sessions.delete(c.scratch["session"].id),
        _new_session,
    ),
    Entry(
        ("MessageService.create",),
        lambda c: c.store.messages.create(c.session_id, role=Role.USER),
    ),
    Entry(("MessageService.update",), _update),
    Entry(("MessageService.update",), _terminal_update, _new_message),
    Entry(("MessageService.update_with",), _update_with, _new_message),
    Entry(("MessageService.get",), lambda c: c.store.messages.get(c.message.id)),
    Entry(("MessageService.list",), lambda c: c.store.messages.list(c.session_id)),
    Entry(
        ("MessageService.list_user_messages",),
        lambda c: c.store.messages.list_user_messages(c.session_id),
    ),
    Entry(
        ("MessageService.list_all_user_messages",),
        lambda c: c.store.messages.list_all_user_messages(),
    ),
    Entry(("MessageService.flush",), lambda c: c.store.messages.flush(c.message.id)),
    Entry(("MessageService.flush_all",), lambda c: c.store.messages.flush_all()),
    Entry(("MessageService.snapshot",), lambda c: c.store.messages.snapshot(c.session_id)),
    Entry(
        ("MessageService.delete",),
        lambda c: c.store.messages.delete(c.scratch["message"].id),
        _new_message,
    ),
    Entry(
        ("MessageService.delete_session_messages",),
        lambda c: c.store.messages.delete_session_messages(c.scratch["session"].id),
        _new_session,
    ),
    Entry(("FeedSubscription.receive",), _receive, _replaying_subscription),
    Entry(("FeedSubscription.__anext__",), _anext, _replaying_subscription),
    Entry(("FeedSubscription.__aenter__", "FeedSubscription.__aexit__"), _sub_context),
    Entry(("Dispatcher.submit",), lambda c: c.dispatcher.submit(c.session_id, "hi")),
    Entry(("Receipt.outcome", "Turn.reply", "Turn.steering"), _outcome, _receipt),
    Entry(("Receipt.wait_resolved",), _wait_resolved, _receipt),
    Entry(("Dispatcher.route",), lambda c: c.dispatcher.route("chan:peer", title="routed")),
    Entry(("Dispatcher.delivery",), lambda c: c.dispatcher.delivery(c.session_id)),
    Entry(("Dispatcher.stop",), lambda c: c.dispatcher.stop(c.session_id)),
    Entry(("Dispatcher.cancel_one",), lambda c: c.dispatcher.cancel_one(c.session_id)),
    Entry(("Dispatcher.cancel_all",), lambda c: c.dispatcher.cancel_all(c.session_id)),
    Entry(("Dispatcher.reset",), lambda c: c.dispatcher.reset()),
    Entry(("Dispatcher.find_input",), lambda c: c.dispatcher.find_input(c.session_id, "k")),
    Entry(("Dispatcher.get_input",), lambda c: c.dispatcher.get_input("no-such-input")),
    Entry(("Dispatcher.active_input",), lambda c: c.dispatcher.active_input(c.session_id)),
    Entry(("Dispatcher.get_turn",), lambda c: c.dispatcher.get_turn("no-such-turn")),
    Entry(
        ("Dispatcher.__aenter__", "Dispatcher.__aexit__", "Dispatcher.start"),
        _spare_context,
    ),
    # The blocking twin (its own store on its own thread; the same fault is armed on it).
    Entry(("SyncStore.__enter__",), _sync_call(lambda c: c.sync.__enter__()), sync=True),
    Entry(
        ("SyncStore.transaction",),
        _sync_call(lambda c: c.sync.transaction(_touch)),
        sync=True,
    ),
    Entry(("SyncStore.recover",), _sync_call(lambda c: c.sync.recover()), sync=True),
    Entry(
        (
            "SyncSessionService.create",
            "SyncSessionService.save",
            "SyncSessionService.delete",
        ),
        _sync_call(_s_session_roundtrip),
        sync=True,
    ),
    Entry(
        ("SyncSessionService.get",),
        _sync_call(lambda c: c.sync.sessions.get(c.sync_session_id)),
        sync=True,
    ),
    Entry(("SyncSessionService.list",), _sync_call(lambda c: c.sync.sessions.list()), sync=True),
    Entry(
        (
            "SyncMessageService.create",
            "SyncMessageService.update",
            "SyncMessageService.flush",
            "SyncMessageService.flush_all",
            "SyncMessageService.get",
            "SyncMessageService.delete",
        ),
        _sync_call(_s_messages),
        sync=True,
    ),
    Entry(("SyncMessageService.create_in",), _sync_call(_s_create_in), sync=True),
    Entry(("SyncMessageService.update_with",), _sync_call(_s_update_with), sync=True),
    Entry(
        ("SyncMessageService.list",),
        _sync_call(lambda c: c.sync.messages.list(c.sync_session_id)),
        sync=True,
    ),
    Entry(
        ("SyncMessageService.list_user_messages",),
        _sync_call(lambda c: c.sync.messages.list_user_messages(c.sync_session_id)),
        sync=True,
    ),
    Entry(
        ("SyncMessageService.list_all_user_messages",),
        _sync_call(lambda c: c.sync.messages.list_all_user_messages()),
        sync=True,
    ),
    Entry(
        ("SyncMessageService.delete_session_messages",),
        _sync_call(_s_delete_session_messages),
        sync=True,
    ),
    Entry(
        ("SyncMessageService.snapshot",),
        _sync_call(lambda c: c.sync.messages.snapshot()),
        sync=True,
    ),
    Entry(("SyncMessageService.stats",), _sync_call(lambda c: c.sync.messages.stats()), sync=True),
    Entry(
        (
            "SyncMessageService.subscribe",
            "SyncSubscription.get",
            "SyncSubscription.__enter__",
            "SyncSubscription.__exit__",
        ),
        _sync_call(_s_sub_get),
        sync=True,
    ),
    Entry(
        ("SyncSessionService.subscribe", "SyncSubscription.drain", "SyncSubscription.close"),
        _sync_call(_s_sub_drain),
        sync=True,
    ),
    Entry(("SyncSubscription.__next__",), _sync_call(_s_sub_next), sync=True),
    # Last: closing everything.
    Entry(
        ("SyncStore.close", "SyncStore.__exit__"), _sync_call(lambda c: c.sync.close()), sync=True
    ),
    Entry(("Dispatcher.close",), lambda c: c.dispatcher.close()),
    Entry(
        ("MessageService.close", "Store.close", "Store.__aexit__"),
        lambda c: c.store.close(),
    ),
]


def test_the_table_names_every_public_awaitable() -> None:
    covered = {name for entry in TABLE for name in entry.covers}
    public = public_awaitables()
    assert public - covered == set(), "public awaitables without an entry in TABLE"
    assert covered - public == set(), "entries in TABLE for names that are not public"


# -- the faults ----------------------------------------------------------------------------------


def _expected(error: BaseException) -> bool:
    """An error a call may end with under the faults: the store's own, the injected one, or a
    subscription ended by another thread."""
    if isinstance(error, MessageStoreError | SubscriptionEnded):
        return True
    return isinstance(error, OSError) and "injected" in str(error)


class Closer(threading.Thread):
    """Closes the subscriptions handed to it, from its own thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="closer")
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self) -> None:
        while (item := self.inbox.get()) is not None:
            item.close()


PEER = """
import asyncio, sys
from messagestore import open_store, NotFoundError
async def main(url, *ids):
    async with open_store(url) as store:
        for session_id in ids:
            try:
                await store.sessions.delete(session_id)
            except NotFoundError:
                pass
asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
async def ctx(db_url: str) -> AsyncIterator[Ctx]:
    # Opened and set up with the default deadline (a busy machine may take longer than
    # JOB_TIMEOUT to set up); the calls run with the short one (``_short_deadlines``).
    store = await open_store(db_url, debounce=0.02)
    box: list[Ctx] = []
    run_turn = await run_turn_for(box)
    config = QueueConfig(debounce=0.01, max_wait=0.05)
    dispatcher = Dispatcher(store, run_turn, config, poll_interval=0.1)
    spare = Dispatcher(store, run_turn, config, poll_interval=0.1)
    sync = await asyncio.to_thread(messagestore.sync.open_store, db_url, debounce=0.02)
    try:
        session = await store.sessions.create("waits")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        sync_session = await asyncio.to_thread(sync.sessions.create, "sync waits")
        await asyncio.to_thread(sync.messages.create, sync_session.id, role=Role.USER)
        await dispatcher.start()
        context = Ctx(store, session.id, message, dispatcher, spare, sync, sync_session.id)
        box.append(context)
        for database in (store._database, sync._store._database):
            database.job_timeout = JOB_TIMEOUT  # jobs submitted from now on
        yield context
    finally:
        await asyncio.to_thread(sync.close)
        await dispatcher.close()
        await spare.close()
        await store.close()


async def _arm(ctx: Ctx, fault: str, *, sync: bool) -> None:
    """Arm ``fault`` for the next call (on the twin's store for a blocking call)."""
    if fault not in ("fail", "stall"):
        return

    async def arm(store: Store) -> None:
        plan = faults(store)
        plan.clear()
        for kind in ("write", "read"):
            if fault == "fail":
                plan.fail_next(kind=kind, error=OSError(f"injected: a {kind} failed"))
            else:
                plan.stall_next(kind=kind)

    if sync:
        await asyncio.to_thread(ctx.sync._runner.call, arm, ctx.sync._store)
    else:
        await arm(ctx.store)


async def _disarm(ctx: Ctx, *, sync: bool) -> None:
    async def disarm(store: Store) -> None:
        if not store.closed:
            faults(store).clear()

    if sync:
        if not ctx.sync.closed:
            await asyncio.to_thread(ctx.sync._runner.call, disarm, ctx.sync._store)
    else:
        await disarm(ctx.store)


@pytest.mark.parametrize("fault", FAULTS)
async def test_every_wait_ends(ctx: Ctx, fault: str, db_url: str, processes: Processes) -> None:
    closer: Closer | None = None
    other: Store | None = None
    if fault == "peer":
        # Input pending and a change buffered in the session the peer deletes.
        await ctx.dispatcher.submit(ctx.session_id, "pending")
        await _update(ctx)
        peer = await processes.exec(
            sys.executable, "-c", PEER, db_url, ctx.session_id, ctx.sync_session_id
        )
        async with asyncio.timeout(60):
            assert await peer.wait() == 0
    elif fault == "compaction":
        reads = FeedReads(ctx.store._repository)
        held = ctx.store.messages.subscribe()
        await reads.held()
        await _prune_elsewhere(db_url)
        reads.release()
        held.close()
    elif fault == "thread":
        closer = Closer()
        closer.start()
        other = await open_store(db_url, debounce=0)

    outcomes: dict[str, str] = {}
    try:
        for entry in TABLE:
            name = "/".join(entry.covers)
            if entry.prepare is not None:
                try:
                    async with asyncio.timeout(BOUND):
                        await entry.prepare(ctx)
                except MessageStoreError as exc:  # the peer deleted what it builds on
                    outcomes[name] = f"not prepared: {type(exc).__name__}"
                    continue
            if closer is not None and other is not None and not ctx.store.closed:
                subs = [
                    ctx.store.messages.subscribe(),
                    ctx.store.messages.subscribe(session_id=ctx.session_id, since=0),
                    ctx.store.sessions.subscribe(),
                ]
                await other.sessions.create("elsewhere")  # another store commits meanwhile
                for sub in subs:
                    closer.inbox.put(sub)
            await _arm(ctx, fault, sync=entry.sync)
            bound = asyncio.timeout(BOUND)
            try:
                async with bound:
                    await entry.call(ctx)
            except TimeoutError as exc:
                if bound.expired():
                    raise AssertionError(
                        f"{name} still waited after {BOUND} s under fault {fault!r}"
                    ) from exc
                if not isinstance(exc, DatabaseTimeout):  # a wait of its own gave up
                    raise AssertionError(f"{name} under {fault!r} raised {exc!r}") from exc
                outcomes[name] = "DatabaseTimeout"
            except Exception as exc:
                outcomes[name] = type(exc).__name__
                if not _expected(exc):
                    raise AssertionError(f"{name} under {fault!r} raised {exc!r}") from exc
            else:
                outcomes[name] = "ok"
            finally:
                await _disarm(ctx, sync=entry.sync)
    finally:
        if closer is not None:
            closer.inbox.put(None)
            await asyncio.to_thread(closer.join, BOUND)
        if other is not None:
            await other.close()
    assert ctx.hangs == []
    assert set(outcomes) == {"/".join(entry.covers) for entry in TABLE}
