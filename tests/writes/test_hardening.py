"""Regression tests for the hardening issue: one test per item, and what the checks found.

* ``test_itemNN_*``: the issue's items. Each promise was broken by the store before the core
  rewrite (commit f69111d): a cancelled caller, a racing delete, a slow reader, a second
  process. The docstring says what went wrong; the first test of each item fails on f69111d.
  Those marked "found by the model test" are holes ``test_model_concurrent`` found later.
* ``test_suspected_*``: what the issue suspected without reproducing it, checked.

Every wait is bounded (``asyncio.timeout``), so a regression shows as a failure within
seconds, not as a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    BackgroundTaskFailed,
    FinishReason,
    InvalidMessage,
    Message,
    MessageNotFound,
    Role,
    SessionNotFound,
    Store,
    Text,
    ToolCall,
    WriteFailed,
    batch_written,
    write_failed,
)
from messagestore._store import StoreOptions, open_store_with
from pubsub import Event, EventType
from tests.writes.test_update_contract import WriteLock

WAIT = 10.0  # upper bound for anything expected to happen


def opened(url: str, **options: Any) -> Any:
    """``open_store`` with the private knobs (``debounce``, ``lease_ttl``, ``idle_release``)."""
    return open_store_with(url, StoreOptions(**options))


@contextlib.asynccontextmanager
async def bounded(what: str, seconds: float = WAIT) -> AsyncIterator[None]:
    """Fail (not hang) if the block takes longer than ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        pytest.fail(f"{what} did not finish within {seconds} s")


async def drain(sub: Any) -> list[Event[Message]]:
    """Every event a subscription still holds once its store is closed; then close it."""
    try:
        async with asyncio.timeout(WAIT):
            return [event async for event in sub]
    finally:
        sub.close()


def last_events(events: list[Event[Message]]) -> dict[str, Event[Message]]:
    last: dict[str, Event[Message]] = {}
    for event in events:
        last[event.payload.id] = event
    return last


def assert_nothing_after_deleted(events: list[Event[Message]]) -> None:
    deleted: set[str] = set()
    for event in events:
        assert event.payload.id not in deleted, f"{event.type} after DELETED of {event.payload.id}"
        if event.type is EventType.DELETED:
            deleted.add(event.payload.id)


async def yield_randomly(rng: random.Random) -> None:
    """Let the loop run for a random while: a few turns, or a short real pause."""
    if rng.random() < 0.5:
        for _ in range(rng.randrange(0, 20)):
            await asyncio.sleep(0)
    else:
        await asyncio.sleep(rng.uniform(0, 0.004))


async def cancel_at_random(rng: random.Random, call: Awaitable[Any]) -> None:
    """Start ``call``, cancel it at a random point, and wait until it has ended."""
    task = asyncio.ensure_future(call)
    await yield_randomly(rng)
    task.cancel()
    async with asyncio.timeout(WAIT):
        with contextlib.suppress(asyncio.CancelledError, MessageNotFound, SessionNotFound):
            await task


async def admin_query(url: str, sql: str) -> list[Any]:
    """Run ``sql`` on a connection of its own (PostgreSQL) and return the rows."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


async def assert_no_write_lock_held(url: str) -> None:
    """No connection of the store sits inside a transaction (SQLite: the write lock is free)."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        assert path is not None

        def try_lock() -> None:
            probe = sqlite3.connect(path, isolation_level=None, timeout=2.0)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            finally:
                probe.close()

        await asyncio.to_thread(try_lock)
        return
    rows = await admin_query(
        url,
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'",
    )
    assert rows == [], f"connections left inside a transaction: {rows}"


async def assert_counts_match_rows(store: Store) -> None:
    for session in await store.sessions.list():
        rows = await store.messages.list(session.id)
        assert session.message_count == len(rows), (session.title, session.message_count, rows)


# -- 1. a cancelled call never leaves a transaction open ------------------------------------------


async def test_item01_a_cancelled_write_never_leaves_the_database_locked(db_url: str) -> None:
    """Item 1: cancelling ``delete()``, ``create()``, ``sessions.save()`` or a terminal
    ``update()`` at a random point left (now and then) a SQLite connection inside ``BEGIN
    IMMEDIATE``: the next write waited out the 30 s busy timeout, and so did ``close()``."""
    rng = random.Random(20260101)
    store = await opened(db_url, debounce=0.01)
    try:
        session = await store.sessions.create("cancelled calls")
        for trial in range(80):
            async with bounded(f"a create after {trial} cancelled calls (database locked?)", 5):
                victim = await store.messages.create(session.id, role=Role.ASSISTANT)
            kind = trial % 4
            call: Awaitable[Any]
            if kind == 0:
                call = store.messages.delete(victim.id)
            elif kind == 1:
                call = store.messages.create(session.id, role=Role.USER, parts=[Text("c")])
            elif kind == 2:
                session.title = f"renamed {trial}"
                call = store.sessions.save(session)
            else:
                victim.append_text("done")
                victim.add_finish(FinishReason.END_TURN)
                call = store.messages.update(victim)
            await cancel_at_random(rng, call)
        async with bounded("a write after the cancelled calls (database locked?)", 5):
            after = await store.sessions.create("after the cancellations")
            await store.messages.create(after.id, role=Role.USER, parts=[Text("ok")])
        await assert_no_write_lock_held(db_url)
        await assert_counts_match_rows(store)
    finally:
        async with bounded("close()", 5):
            await store.close()
    await assert_no_write_lock_held(db_url)


async def test_item01_a_cancelled_call_whose_job_fails_leaves_no_unretrieved_error(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 1, found by the model test: a call cancelled while its job was queued, whose job
    then failed (a create in a session deleted meanwhile), left asyncio logging "Future exception
    was never retrieved": nobody was left to take the error."""
    async with opened(db_url) as store:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(5):
                call = asyncio.ensure_future(
                    store.messages.create("no such session", role=Role.USER)
                )
                await asyncio.sleep(0)  # its job is queued
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
            await store.sessions.create("barrier")  # the failed jobs are done
            del call
            gc.collect()
        assert "never retrieved" not in caplog.text


# -- 2. one unstorable row never holds a group commit hostage -------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("is_summary_message", None), ("model", None), ("provider", 7), ("model", "nul\x00")],
)
async def test_item02_update_refuses_a_field_the_row_cannot_store(
    db_url: str, field: str, value: object
) -> None:
    """Item 2: ``update()`` accepted ``is_summary_message=None``; every later group commit then
    failed its NOT NULL constraint, with every other message of the batch."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("unstorable")
        bad, good = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"]
        setattr(bad, field, value)
        with pytest.raises(InvalidMessage, match=field):
            await store.messages.update(bad)
        good.append_text("written")
        await store.messages.update(good)
        async with bounded("flush_all"):
            await store.messages.flush_all()
        assert (await store.messages.get(good.id)).text == "written"
        assert store.messages.stats().write_failures == 0


async def refuse_writes_of(url: str, message_id: str) -> Callable[[], Awaitable[None]]:
    """Install a trigger that refuses every UPDATE of one message row; return its remover."""
    engine = create_async_engine(url)
    quoted = message_id.replace("'", "''")
    if url.startswith("sqlite"):
        install = [
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON messages "
            f"WHEN NEW.id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        ]
        remove = ["DROP TRIGGER IF EXISTS refuse_one"]
    else:
        install = [
            "CREATE OR REPLACE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.id = '{quoted}' THEN "
            "RAISE check_violation USING MESSAGE = 'refused by test'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON messages "
            "FOR EACH ROW EXECUTE FUNCTION refuse_one()",
        ]
        remove = [
            "DROP TRIGGER IF EXISTS refuse_one ON messages",
            "DROP FUNCTION IF EXISTS refuse_one()",
        ]
    async with engine.begin() as conn:
        for statement in install:
            await conn.execute(text(statement))

    async def removed() -> None:
        async with engine.begin() as conn:
            for statement in remove:
                await conn.execute(text(statement))
        await engine.dispose()

    return removed


async def test_item02_a_refused_row_does_not_hold_the_batch_hostage(db_url: str) -> None:
    """Item 2: a failed batch must isolate the culprit: the other messages of the group commit
    are written and announced, the refused state stays buffered and its flush raises, and it is
    written once the database takes it again."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("hostage")
        culprit, *others = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(4)
        ]
        remove_trigger = await refuse_writes_of(db_url, culprit.id)
        async with store.messages.subscribe() as sub:
            for message in [culprit, *others]:
                message.append_text(f"text of {message.id}")
                await store.messages.update(message)
            async with bounded("flush_all"):
                with pytest.raises(WriteFailed):
                    await store.messages.flush_all()  # one group commit: the culprit fails
            for message in others:
                assert (await store.messages.get(message.id)).text == message.text
            assert (await store.messages.get(culprit.id)).text == ""
            async with bounded("flush of the refused message"):
                with pytest.raises(WriteFailed, match="refused by test"):
                    await store.messages.flush(culprit.id)
            assert store.messages.stats().pending_messages == 1
            async with bounded("the other messages' events"):
                seen: dict[str, str] = {}
                while any(seen.get(m.id) != m.text for m in others):
                    event = await sub.receive()
                    seen[event.payload.id] = event.payload.text
            assert culprit.id not in seen
            await remove_trigger()
            async with bounded("flush after the database takes the row again"):
                await store.messages.flush(culprit.id)
            assert (await store.messages.get(culprit.id)).text == culprit.text


async def test_item02_a_refused_row_does_not_slow_the_other_messages_down(db_url: str) -> None:
    """Item 2: a row the database keeps refusing backs off on its own. It used to put the
    whole flusher into backoff (every other message then waited up to 2 s between writes) and
    joined every tick, so each group commit fell back to writing row by row."""
    async with opened(db_url, debounce=0.01) as store:
        session = await store.sessions.create("slowed down")
        culprit, good = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"]
        remove_trigger = await refuse_writes_of(db_url, culprit.id)
        refusals = 0
        written = asyncio.Event()

        def on_failure(sender: object, **kwargs: Any) -> None:
            nonlocal refusals
            refusals += culprit.id in kwargs["message_ids"]

        def on_batch(sender: object, **kwargs: Any) -> None:
            written.set()

        write_failed.connect(on_failure)
        batch_written.connect(on_batch)
        try:
            culprit.append_text("refused")
            await store.messages.update(culprit)
            async with bounded("the good message's writes"):
                for n in range(20):  # each delta waits for its write: 20 ticks
                    good.append_text(f"<{n}>")
                    await store.messages.update(good)
                    while True:
                        written.clear()
                        if (await store.messages.get(good.id)).text == good.text:
                            break
                        await written.wait()
        finally:
            write_failed.disconnect(on_failure)
            batch_written.disconnect(on_batch)
            await remove_trigger()
        # With its own exponential backoff the culprit is tried a handful of times in 20
        # ticks; tried in every tick it would have been refused about 20 times.
        assert 1 <= refusals <= 10, refusals
        async with bounded("flush of the culprit"):
            await store.messages.flush(culprit.id)
        assert (await store.messages.get(culprit.id)).text == "refused"


# -- 3. a create racing its session's delete is never lost silently -------------------------------


async def test_item03_a_create_racing_its_sessions_delete_fails_or_is_reported(
    db_url: str,
) -> None:
    """Item 3: with ``create()`` racing ``sessions.delete()`` (PostgreSQL, about one trial in
    eight), ``create()`` returned and announced ``CREATED``, then the row died in the foreign
    key cascade and no ``DELETED`` reported it. Now the create fails with ``SessionNotFound``
    or the delete reports the row. The deleting store stands for a second process."""
    rng = random.Random(3)
    async with opened(db_url) as creator, opened(db_url) as deleter:
        async with deleter.messages.subscribe(buffer_size=10_000) as deletions:
            created: list[str] = []
            refused = 0
            for trial in range(40):
                session = await creator.sessions.create(f"race {trial}")
                await creator.messages.create(session.id, role=Role.USER, parts=[Text("first")])

                async def create(session_id: str = session.id) -> None:
                    nonlocal refused
                    await yield_randomly(rng)
                    try:
                        message = await creator.messages.create(
                            session_id, role=Role.USER, parts=[Text("racing")]
                        )
                    except SessionNotFound:
                        refused += 1
                    else:
                        created.append(message.id)

                async with bounded(f"trial {trial}"):
                    await asyncio.gather(create(), create(), deleter.sessions.delete(session.id))
            # A last delete of the deleting store: its event comes after all the others.
            last = await creator.sessions.create("sentinel")
            sentinel = await creator.messages.create(last.id, role=Role.USER)
            await deleter.messages.delete(sentinel.id)
            reported: set[str] = set()
            async with bounded("the DELETED events"):
                while True:
                    event = await deletions.receive()
                    if event.payload.id == sentinel.id:
                        break
                    if event.type is EventType.DELETED:
                        reported.add(event.payload.id)
            vanished = set(created) - reported
            assert not vanished, f"{len(vanished)} of {len(created)} created rows vanished unseen"
        for message_id in created:
            with pytest.raises(MessageNotFound):
                await creator.messages.get(message_id)
    assert created and refused, (len(created), refused)  # both outcomes happened


# -- 4. a recovery repair never follows DELETED ----------------------------------------------------


async def leave_streaming(url: str, count: int) -> list[Message]:
    """Messages a store left streaming when it closed (its lease ended): the sweep's work."""
    async with opened(url) as gone:
        session = await gone.sessions.create("left streaming")
        left = []
        for n in range(count):
            message = await gone.messages.create(session.id, role=Role.ASSISTANT)
            message.append_text(f"half an answer {n}")
            await gone.messages.update(message)
            left.append(message)
        await gone.messages.flush_all()
    return left


def on_sweep(store: Store) -> asyncio.Event:
    """An event set as soon as the store's recovery sweep has committed."""
    repository = store._repository
    real = repository.sweep_abandoned
    swept = asyncio.Event()

    async def sweep(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        swept.set()
        return result

    repository.sweep_abandoned = sweep  # type: ignore[method-assign]
    return swept


async def test_item04_a_recovery_repair_never_follows_deleted(db_url: str) -> None:
    """Item 4: ``recover()`` published its repairs after the sweep, outside the per-message
    order; a delete landing meanwhile gave subscribers ``DELETED(m)`` then ``UPDATED(m)``.
    Here a slow subscriber holds the repair announcements back while ``m`` is deleted."""
    async with opened(db_url) as store:
        store.messages._broker.must_deliver_timeout = 1.0
        slow = store.messages.subscribe(buffer_size=1)
        watch = store.messages.subscribe(buffer_size=10_000)
        first, second = await leave_streaming(db_url, 2)
        mine = await store.sessions.create("mine")
        await store.messages.create(mine.id, role=Role.USER)  # fills the slow buffer
        swept = on_sweep(store)
        recovery = asyncio.ensure_future(store.recover())
        async with bounded("the sweep"):
            await swept.wait()
        async with bounded("the delete"):
            await store.messages.delete(second.id)
        async with bounded("recover()"):
            report = await recovery
        assert report.messages_interrupted == 2
        repaired = await store.messages.get(first.id)
        assert repaired.finish is not None
    for sub in (watch, slow):
        events = await drain(sub)
        assert_nothing_after_deleted(events)
        last = last_events(events)
        assert last[second.id].type is EventType.DELETED
        assert last[first.id].payload == repaired


# -- 5. a slow subscriber ends on the newest state ---------------------------------------------


async def test_item05_a_slow_subscriber_still_learns_the_message_finished(db_url: str) -> None:
    """Item 5: when the terminal event had to wait for room in a slow subscriber, the held
    newest state was discarded and, after the 50 ms bound, the terminal event too: the UI
    showed an unfinished message forever. The late terminal event now stays queued (and still
    counts as a must-deliver drop)."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("slow reader")
        sub = store.messages.subscribe(buffer_size=1)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)  # fills it
        for n in range(5):
            message.append_text(f"token {n} ")
            await store.messages.update(message)
            await store.messages.flush(message.id)
        message.add_finish(FinishReason.END_TURN)
        async with bounded("the terminal update (bounded by must_deliver_timeout)"):
            await store.messages.update(message)
        assert store.messages._broker.must_deliver_drop_count >= 1
        stored = await store.messages.get(message.id)
    events = await drain(sub)
    assert events, "the slow subscriber received nothing"
    final = last_events(events)[message.id]
    assert final.payload.is_finished, f"ended on {final.type} {final.payload.text!r}"
    assert final.payload == stored


# -- 6. a cancelled terminal update keeps its announcement ---------------------------------------


async def test_item06_a_cancelled_terminal_update_is_still_announced(db_url: str) -> None:
    """Item 6: cancelling a terminal ``update()`` while it waited for a slow subscriber
    withdrew the event: the write was durable but the subscriber never heard of it."""
    async with opened(db_url, debounce=60) as store:
        store.messages._broker.must_deliver_timeout = 30  # the update waits until cancelled
        session = await store.sessions.create("cancelled announcement")
        sub = store.messages.subscribe(buffer_size=1)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)  # fills it
        committed = asyncio.Event()

        def on_batch(sender: object, **kwargs: Any) -> None:
            if kwargs["terminal"]:
                committed.set()

        batch_written.connect(on_batch)
        try:
            message.append_text("the answer")
            message.add_finish(FinishReason.END_TURN)
            terminal = asyncio.ensure_future(store.messages.update(message))
            async with bounded("the terminal write"):
                await committed.wait()
            for _ in range(5):  # let it reach its wait for the slow subscriber
                await asyncio.sleep(0)
            assert not terminal.done(), "the update did not wait for the slow subscriber"
            terminal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await terminal
        finally:
            batch_written.disconnect(on_batch)
        stored = await store.messages.get(message.id)
        assert stored.is_finished
    events = await drain(sub)
    final = last_events(events)[message.id]
    assert final.payload.is_finished, f"ended on {final.type} {final.payload.text!r}"
    assert final.payload == stored


# -- 7. a change the row cannot take is refused, never announced --------------------------------


async def test_item07_immutable_fields_are_refused_and_the_rest_are_stored(db_url: str) -> None:
    """Item 7: ``update()`` accepted a changed ``role`` or ``session_id`` (and
    ``is_summary_message``, ``created_at``): the event announced the new value, the row kept
    the old one. Now the fields the row keeps for life are refused with ``InvalidMessage``,
    the others are stored, and the event always equals the row."""
    async with opened(db_url, debounce=60) as store:
        session = await store.sessions.create("immutable")
        elsewhere = await store.sessions.create("elsewhere")
        sub = store.messages.subscribe(buffer_size=10_000)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        refused = {
            "role": Role.USER,
            "session_id": elsewhere.id,
            "created_at": message.created_at - timedelta(days=1),
        }
        for field, value in refused.items():
            changed = message.clone()
            setattr(changed, field, value)
            with pytest.raises(InvalidMessage, match=field):
                await store.messages.update(changed)
        stored = {"is_summary_message": True, "model": "model-2", "provider": "provider-2"}
        for field, value in stored.items():
            setattr(message, field, value)
            message.append_text(f"{field} ")
            await store.messages.update(message)
            async with bounded("flush"):
                await store.messages.flush(message.id)
            assert getattr(await store.messages.get(message.id), field) == value
        row = await store.messages.get(message.id)
        assert (row.role, row.session_id, row.created_at) == (
            Role.ASSISTANT,
            session.id,
            message.created_at,
        )
        assert await store.messages.list(elsewhere.id) == []
    events = await drain(sub)
    assert events
    for event in events:
        assert event.payload.role is Role.ASSISTANT
        assert event.payload.session_id == session.id
        assert event.payload.created_at == message.created_at
    assert last_events(events)[message.id].payload == row


@pytest.mark.parametrize("released_by", ["no debounce", "finish"])
async def test_item07_immutable_fields_are_refused_after_the_buffer_released_the_message(
    db_url: str, released_by: str
) -> None:
    """Item 7, once the write path has let go of the message (``debounce=0`` releases it
    after every write, a finished message is released after its write): a changed ``role``
    or ``session_id`` was accepted as a new entry, announced, and never stored."""
    async with opened(db_url, debounce=0 if released_by == "no debounce" else 60) as store:
        session = await store.sessions.create("released")
        elsewhere = await store.sessions.create("elsewhere")
        sub = store.messages.subscribe(buffer_size=10_000)
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("written")
        if released_by == "finish":
            message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        assert store.messages.stats().buffered_messages == 0  # released
        for field, value in {"role": Role.USER, "session_id": elsewhere.id}.items():
            changed = message.clone()
            setattr(changed, field, value)
            with pytest.raises(InvalidMessage, match=field):
                await store.messages.update(changed)
        async with bounded("flush_all"):
            await store.messages.flush_all()
        row = await store.messages.get(message.id)
        assert (row.role, row.session_id) == (Role.ASSISTANT, session.id)
    events = await drain(sub)
    assert all(e.payload.role is Role.ASSISTANT for e in events), events
    assert last_events(events)[message.id].payload == row


async def test_item07_immutable_fields_are_refused_while_the_first_write_is_in_flight(
    db_url: str,
) -> None:
    """Item 7, found by the model test: while the first write of a message the buffer held
    no written state for was in flight, nothing was left to compare with, and an update
    changing ``role`` was accepted."""
    async with opened(db_url, debounce=0) as store:
        session = await store.sessions.create("in flight")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("written")
        await store.messages.update(message)  # released (no debounce)
        async with WriteLock(db_url, message.id):
            message.append_text(", then held")
            first = asyncio.ensure_future(store.messages.update(message))
            await asyncio.sleep(0)  # accepted, its write waits for the lock
            assert not first.done()
            changed = message.clone()
            changed.role = Role.USER
            async with bounded("update() with a changed role (accepted, then held?)", 3):
                with pytest.raises(InvalidMessage, match="role"):
                    await store.messages.update(changed)
        async with bounded("the first write"):
            await first
        assert (await store.messages.get(message.id)).role is Role.ASSISTANT


@pytest.mark.parametrize("debounce", [0, 60])
async def test_item07_a_store_that_never_saw_the_message_never_announces_a_changed_role(
    db_url: str, debounce: float
) -> None:
    """Item 7, for a message this store never saw (another process created it): nothing in
    memory says what its row keeps for life, so the write itself must check; an update that
    changes ``role`` is refused (its flush raises ``WriteFailed`` naming the field), nothing
    is announced, and the store takes the stored value as the truth from then on."""
    async with opened(db_url) as creator, opened(db_url, debounce=debounce) as store:
        session = await creator.sessions.create("foreign")
        message = await creator.messages.create(session.id, role=Role.ASSISTANT)
        sub = store.messages.subscribe(buffer_size=10_000)
        changed = message.clone()
        changed.role = Role.USER
        changed.append_text("wrong role")

        async def write(state: Message) -> None:
            await store.messages.update(state)
            await store.messages.flush(state.id)

        async with bounded("the refused write"):
            with pytest.raises(WriteFailed, match="role"):
                await write(changed)
        with pytest.raises(InvalidMessage, match="role"):  # known now: refused at once
            await store.messages.update(changed)
        message.append_text("right role")
        async with bounded("the right state's write"):
            await write(message)
        row = await store.messages.get(message.id)
        assert (row.role, row.text) == (Role.ASSISTANT, "right role")
    events = await drain(sub)
    assert all(e.payload.role is Role.ASSISTANT for e in events), events
    assert last_events(events)[message.id].payload == row


# -- 8. no debounce, no unbounded buffer ----------------------------------------------------------


async def test_item08_without_debounce_written_messages_are_released(db_url: str) -> None:
    """Item 8: with ``debounce=0`` idle entries were released only by the flusher, which
    ``debounce=0`` never starts: the buffer grew by one entry per message ever updated."""
    async with opened(db_url, debounce=0) as store:
        session = await store.sessions.create("no debounce")
        messages = [await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(30)]
        for message in messages:
            for n in range(3):
                message.append_text(f"{n} ")
                await store.messages.update(message)  # written at once, never finished
        assert store.messages.stats().buffered_messages == 0
        assert store.messages.stats().pending_messages == 0
        message = messages[0]  # a released message can still be updated and finished
        message.add_finish(FinishReason.END_TURN)
        await store.messages.update(message)
        assert (await store.messages.get(message.id)).is_finished
        for message in messages:
            assert (await store.messages.get(message.id)).text == "0 1 2 "
        assert store.messages.stats().buffered_messages == 0


# -- 9. rows deleted elsewhere: reported, never a failed close ------------------------------------


async def test_item09_rows_deleted_elsewhere_are_reported_and_close_still_closes(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 9: ``close()`` raised ``MessageNotFound`` when another process had deleted a
    message this store was streaming, so leaving ``async with open_store()`` raised; and
    ``flush_all()`` named only the first missing id."""
    async with opened(db_url) as other:
        async with opened(db_url, debounce=60) as store:
            session = await store.sessions.create("deleted elsewhere")
            messages = [
                await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(3)
            ]
            for message in messages:
                message.append_text("buffered")
                await store.messages.update(message)
            for message in messages[:2]:
                await other.messages.delete(message.id)
            async with bounded("flush_all"):
                with pytest.raises(MessageNotFound) as caught:
                    await store.messages.flush_all()
            assert set(caught.value.message_ids) == {m.id for m in messages[:2]}
            assert (await store.messages.get(messages[2].id)).text == "buffered"
            last = messages[2]
            last.append_text(" and more")
            await store.messages.update(last)
            await other.messages.delete(last.id)
            with caplog.at_level(logging.WARNING, logger="messagestore"):
                async with bounded("close"):
                    await store.close()  # must not raise
        assert store.closed
        assert last.id in caplog.text


async def test_item09_a_row_this_store_deleted_is_never_reported_as_deleted_elsewhere(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 9, found by the model test: an ``update()`` of a released message (``debounce=0``
    releases after every write) racing this store's own ``delete()`` was written after the
    delete; the write found no row and the next ``flush_all()`` raised ``MessageNotFound``, as
    if another process had deleted it (and ``close()`` logged it so)."""
    async with opened(db_url, debounce=0) as store:
        session = await store.sessions.create("own delete")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("written, then released")
        await store.messages.update(message)
        deleting = asyncio.ensure_future(store.messages.delete(message.id))
        await asyncio.sleep(0)  # the delete is submitted
        message.append_text(" and a late delta")
        with contextlib.suppress(MessageNotFound):  # refused, or written to no row
            await store.messages.update(message)
        async with bounded("the delete"):
            await deleting
        async with bounded("flush_all"):
            await store.messages.flush_all()  # nothing was deleted by anyone else
        with caplog.at_level(logging.WARNING, logger="messagestore"):
            await store.close()
        assert "another process" not in caplog.text


# -- 10. in-memory SQLite under concurrency -------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_item10_in_memory_sqlite_is_correct_under_concurrency(url: str) -> None:
    """Item 10: an in-memory database shared one connection between readers and writers:
    concurrent ``create()`` and reads failed with "cannot start a transaction within a
    transaction", rows went missing and ``message_count`` disagreed with the rows."""
    async with opened(url, debounce=0.005) as store:
        sessions = [await store.sessions.create(f"memory {n}") for n in range(3)]

        async def agent(session_id: str, n: int) -> None:
            for i in range(8):
                message = await store.messages.create(session_id, role=Role.ASSISTANT)
                message.append_text(f"agent {n} message {i}")
                await store.messages.update(message)
                await store.messages.list(session_id)
                await store.sessions.get(session_id)
                message.add_finish(FinishReason.END_TURN)
                await store.messages.update(message)

        async with bounded("concurrent agents", 30):
            await asyncio.gather(*(agent(s.id, n) for s in sessions for n in range(3)))
        for session in sessions:
            rows = await store.messages.list(session.id)
            assert len(rows) == 24
            assert all(m.is_finished and m.text.startswith("agent ") for m in rows)
            assert (await store.sessions.get(session.id)).message_count == 24


# -- 11. the recovery sweep reads unfinished messages only ----------------------------------------


async def test_item11_the_sweep_reads_only_unfinished_messages(db_url: str) -> None:
    """Item 11: the first open after a close rewrote ``writer_id`` on every row the closed
    store had ever written, in one write transaction (0.72 s holding the write lock at 100k
    rows). The sweep now checks only the messages still in progress: its cost follows the
    unfinished messages, not the history."""
    async with opened(db_url) as survivor:
        async with opened(db_url) as writer:
            session = await writer.sessions.create("history")
            for n in range(60):
                await writer.messages.create(session.id, role=Role.USER, parts=[Text(f"q{n}")])
                answer = await writer.messages.create(session.id, role=Role.ASSISTANT)
                answer.append_text(f"a{n}")
                answer.add_finish(FinishReason.END_TURN)
                await writer.messages.update(answer)
            for n in range(2):
                streaming = await writer.messages.create(session.id, role=Role.ASSISTANT)
                streaming.append_text(f"cut off {n}")
                await writer.messages.update(streaming)
        report = await survivor.recover()  # the writer closed: its lease ended
        assert report.messages_interrupted == 2
        assert report.messages_checked == 2, f"checked {report.messages_checked} rows of 122"
        assert await survivor.recover() == type(report)()  # nothing left to look at


# -- suspected in the issue: checked here ----------------------------------------------------------


async def test_suspected_a_cancelled_create_is_still_announced(db_url: str) -> None:
    """Suspected: a ``create()`` cancelled after its commit left a row with no ``CREATED``
    event. Every row a cancelled create leaves must be announced."""
    rng = random.Random(4)
    async with opened(db_url) as store:
        session = await store.sessions.create("cancelled creates")
        sub = store.messages.subscribe(buffer_size=10_000)
        for _ in range(40):
            await cancel_at_random(
                rng, store.messages.create(session.id, role=Role.USER, parts=[Text("c")])
            )
        await store.sessions.create("barrier")  # writes run in order: the creates are done
        rows = await store.messages.list(session.id)
        assert (await store.sessions.get(session.id)).message_count == len(rows)
    events = await drain(sub)
    announced = {e.payload.id for e in events if e.type is EventType.CREATED}
    assert rows, "no create committed: the test cancelled too early to check anything"
    missing = {m.id for m in rows} - announced
    assert not missing, f"{len(missing)} of {len(rows)} created rows were never announced"


async def test_suspected_a_tick_with_a_terminal_state_waits_for_no_subscriber(
    db_url: str,
) -> None:
    """Suspected: a flusher tick that writes a terminal state (a terminal write that failed
    and is retried by the timer) waited for slow subscribers and delayed every other message.
    Here a stuck subscriber would hold such a tick for a minute; the next tick must still
    write the other message."""
    async with opened(db_url, debounce=0.01) as store:
        store.messages._broker.must_deliver_timeout = 60
        session = await store.sessions.create("tick")
        finishing, streaming = [
            await store.messages.create(session.id, role=Role.ASSISTANT) for _ in "ab"
        ]
        stuck = store.messages.subscribe(buffer_size=1)
        await store.messages.create(session.id, role=Role.USER)  # fills the stuck buffer
        repository = store._repository
        real = repository.write_messages
        fail_next = True

        def write(batch: Any, on_commit: Any, **kw: Any) -> Any:
            nonlocal fail_next
            if fail_next:
                fail_next = False
                future = asyncio.get_running_loop().create_future()
                future.set_exception(sqlite3.OperationalError("disk I/O error (injected)"))
                return future
            return real(batch, on_commit, **kw)

        repository.write_messages = write
        written = asyncio.Event()

        def on_batch(sender: object, **kwargs: Any) -> None:
            written.set()

        batch_written.connect(on_batch)
        try:
            finishing.add_finish(FinishReason.END_TURN)
            with pytest.raises(WriteFailed):
                await store.messages.update(finishing)  # kept; the timer retries it
            async with bounded("the timer's retry of the terminal state"):
                while True:
                    written.clear()  # before the read: a commit during it is not missed
                    if (await store.messages.get(finishing.id)).is_finished:
                        break
                    await written.wait()
            streaming.append_text("next tick")
            await store.messages.update(streaming)
            async with bounded("the next tick, behind a stuck subscriber"):
                while True:
                    written.clear()
                    if (await store.messages.get(streaming.id)).text == "next tick":
                        break
                    await written.wait()
        finally:
            batch_written.disconnect(on_batch)
        stuck.close()


async def test_suspected_new_changes_during_an_outage_keep_the_backoff(db_url: str) -> None:
    """Suspected: during an outage, changes to new ids re-armed ticks at the debounce rate,
    bypassing the backoff. Every retry must wait at least the announced ``retry_in`` (a lower
    bound: a busy machine only makes the gaps longer)."""
    async with opened(db_url, debounce=0.005) as store:
        session = await store.sessions.create("outage")
        repository = store._repository
        attempts: list[float] = []
        retries: list[float] = []
        failed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def broken(batch: Any, on_commit: Any, **kw: Any) -> Any:
            attempts.append(loop.time())
            future = loop.create_future()
            future.set_exception(sqlite3.OperationalError("disk I/O error (injected)"))
            return future

        def on_failure(sender: object, **kwargs: Any) -> None:
            retries.append(kwargs["retry_in"])
            failed.set()

        repository.write_messages = broken
        write_failed.connect(on_failure)
        try:
            async with bounded("six failed ticks"):
                while len(retries) < 6:
                    message = await store.messages.create(session.id, role=Role.ASSISTANT)
                    message.append_text("during the outage")
                    await store.messages.update(message)  # a new dirty id
                    failed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.002):
                            await failed.wait()
        finally:
            write_failed.disconnect(on_failure)
            del repository.write_messages  # the class's method again
        assert retries == sorted(retries) and retries[-1] > retries[0]
        for n in range(1, len(attempts)):
            gap = attempts[n] - attempts[n - 1]
            assert gap >= retries[n - 1] - 0.002, (n, gap, retries[n - 1])


@pytest.mark.postgres
async def test_suspected_writes_fail_fast_once_the_writer_task_is_gone(postgres_url: str) -> None:
    """Suspected: if the task that commits is cancelled (a loop shutting down cancels every
    task), the flusher may end silently. On PostgreSQL that task is the database's writer:
    once it is gone, every write must fail at once (not wait forever) with an error naming
    it, and ``close()`` must still close."""
    store = await opened(postgres_url, debounce=0.01)
    session = await store.sessions.create("writer gone")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    writer = store._database._writer.task
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    message.append_text("after the writer")
    await store.messages.update(message)
    async with bounded("flush_all with the writer gone"):
        with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
            await store.messages.flush_all()
    async with bounded("a session write with the writer gone"):
        with pytest.raises(BackgroundTaskFailed, match="postgresql-writer"):
            await store.sessions.create("never")
    async with bounded("close with the writer gone"):
        with contextlib.suppress(WriteFailed):
            await store.close()
    assert store.closed


async def test_suspected_a_sweep_and_a_session_delete_elsewhere_never_deadlock(
    db_url: str,
) -> None:
    """Suspected (PostgreSQL): a recovery sweep in one process and ``sessions.delete`` in
    another could deadlock (the sweep locks leases, then messages, then sessions; the delete
    locks messages, then the session). Every write job now takes the revision counter first."""
    async with opened(db_url) as sweeper, opened(db_url) as deleter:
        for trial in range(4):
            async with opened(db_url) as gone:
                sessions = [await gone.sessions.create(f"trial {trial}") for _ in range(3)]
                for session in sessions:
                    for n in range(3):
                        message = await gone.messages.create(session.id, role=Role.ASSISTANT)
                        message.append_text("calling")
                        message.add_tool_call(ToolCall(f"c{n}", "tool", "{}", finished=True))
                        await gone.messages.update(message)
            async with bounded(f"trial {trial}"):
                report, *_ = await asyncio.gather(
                    sweeper.recover(),
                    *(deleter.sessions.delete(s.id) for s in sessions[:2]),
                )
            # The third session's three, and those of the deleted ones if it came first.
            assert report.messages_interrupted in (3, 6, 9)
            kept = await sweeper.messages.list(sessions[2].id)
            assert all(m.role is Role.TOOL or m.is_finished for m in kept)
            await assert_counts_match_rows(sweeper)
