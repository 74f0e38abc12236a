"""Writer leases and the recovery sweep: a dead writer's streaming messages are repaired once,
a live writer's messages (another process's, or a second store's) are never touched."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import column, delete, insert, select, table, update
from sqlalchemy.engine import Connection

from messagestore import (
    FinishReason,
    Message,
    Reasoning,
    RecoveryReport,
    Role,
    Store,
    Text,
    ToolCall,
    ToolResult,
    open_store,
)
from messagestore._database._engine import create_engine
from messagestore._database._migrate import alembic_config
from messagestore._database._schema import UTCDateTime
from messagestore._database._schema import messages as messages_table
from messagestore._database._schema import writers as writers_table
from messagestore._model import utc_now
from messagestore._recovery._sweep import INTERRUPTED_MESSAGE, INTERRUPTED_TOOL_RESULT
from messagestore._store import StoreOptions, open_store_with
from messagestore.testing import (
    LeaseState,
    break_loop,
    lease_state,
    request_recovery,
    sweeper_state,
    until_heartbeat,
)
from pubsub import EventType
from tests.support.paths import SUPPORT

CHILD = SUPPORT / "crash_child.py"


async def kill_lease(store: Store) -> None:
    """Make ``store`` look dead to others: its heartbeat dies and its lease row expires now."""
    lease = lease_state(store)
    assert lease is not None and lease.running
    await break_loop(store, "lease-heartbeat", RuntimeError("the process died (a test)"))
    async with store.engine.begin() as conn:
        await conn.execute(
            update(writers_table)
            .where(writers_table.c.id == lease.id)
            .values(expires_at=utc_now() - timedelta(seconds=60))
        )


async def in_progress(store: Store, message_id: str) -> bool:
    async with store.engine.connect() as conn:
        query = select(messages_table.c.in_progress).where(messages_table.c.id == message_id)
        return bool((await conn.execute(query)).scalar_one())


async def writer_of(store: Store, message_id: str) -> str | None:
    async with store.engine.connect() as conn:
        query = select(messages_table.c.writer_id).where(messages_table.c.id == message_id)
        return (await conn.execute(query)).scalar_one()


async def conversation(store: Store) -> dict[str, Message]:
    """A session with every shape the sweep must tell apart; the last message is streaming."""
    session = await store.sessions.create("recover me")
    m = store.messages
    user = await m.create(session.id, role=Role.USER, parts=[Text("hi")])
    answered = await m.create(session.id, role=Role.ASSISTANT)
    answered.add_tool_call(ToolCall("c1", "grep", "{}", finished=True))
    answered.add_finish(FinishReason.TOOL_USE)
    await m.update(answered)
    result = await m.create(session.id, role=Role.TOOL, parts=[ToolResult("c1", "grep", "ok")])
    waiting = await m.create(session.id, role=Role.ASSISTANT)  # finished; tool never returned
    waiting.add_tool_call(ToolCall("c2", "run", "{}", finished=True))
    waiting.add_finish(FinishReason.TOOL_USE)
    await m.update(waiting)
    done = await m.create(session.id, role=Role.ASSISTANT, parts=[Text("all good")])
    done.add_finish(FinishReason.END_TURN)
    await m.update(done)
    streaming = await m.create(session.id, role=Role.ASSISTANT)
    streaming.append_reasoning("thinking")
    streaming.append_text("partial ans")
    streaming.add_tool_call(ToolCall("c3", "edit", '{"pa', finished=False))
    await m.update(streaming)
    streaming.append_text("wer")
    await m.update(streaming)
    await m.flush_all()
    return {
        "user": user,
        "answered": answered,
        "result": result,
        "waiting": waiting,
        "done": done,
        "streaming": streaming,
    }


async def test_sweep_repairs_a_dead_writers_messages(db_url: str) -> None:
    dead = await open_store(db_url)
    try:
        made = await conversation(dead)
        session_id = made["user"].session_id
        assert await writer_of(dead, made["streaming"].id) == dead.writer_id
        before = {m.id: m for m in await dead.messages.list(session_id)}
        async with open_store(db_url) as survivor:
            assert (await survivor.recover()).messages_interrupted == 0  # still alive
            await kill_lease(dead)
            async with survivor.messages.subscribe() as events:
                report = await survivor.recover()
                got = [await asyncio.wait_for(events.receive(), 5) for _ in range(3)]
            assert report.messages_interrupted == 1
            assert report.tool_results_added == 2
            assert report.tool_messages_created == 2
            assert report.writers_removed == 1
            assert report.corrupt_message_ids == ()
            after = await survivor.messages.list(session_id)
            by_id = {m.id: m for m in after}
            for key in ("user", "answered", "result", "waiting", "done"):
                assert by_id[made[key].id] == before[made[key].id], key
            fixed = by_id[made["streaming"].id]
            assert fixed.text == "partial answer"
            assert fixed.finish is not None
            assert fixed.finish.reason is FinishReason.INTERRUPTED
            assert fixed.finish.message == INTERRUPTED_MESSAGE
            assert isinstance(fixed.reasoning, Reasoning)
            assert fixed.reasoning.thinking == "thinking"
            assert fixed.reasoning.finished_at is not None
            assert fixed.tool_calls == [ToolCall("c3", "edit", '{"pa', True)]
            new = after[len(before) :]
            assert [m.role for m in new] == [Role.TOOL, Role.TOOL]
            assert [
                (r.tool_call_id, r.content, r.is_error) for m in new for r in m.tool_results
            ] == [
                ("c2", INTERRUPTED_TOOL_RESULT, True),
                ("c3", INTERRUPTED_TOOL_RESULT, True),
            ]
            assert (await survivor.sessions.get(session_id)).message_count == len(after)
            assert [(e.type, e.payload.id) for e in got] == [
                (EventType.UPDATED, fixed.id),
                (EventType.CREATED, new[0].id),
                (EventType.CREATED, new[1].id),
            ]
            assert await survivor.recover() == RecoveryReport()  # idempotent
            assert await survivor.messages.list(session_id) == after
            assert await writer_of(survivor, fixed.id) is None
    finally:
        await dead.close()


async def test_live_writers_are_never_touched(db_url: str) -> None:
    async with open_store(db_url) as a, open_store(db_url) as b:
        sa = await a.sessions.create("a")
        sb = await b.sessions.create("b")
        ma = await a.messages.create(sa.id, role=Role.ASSISTANT)
        mb = await b.messages.create(sb.id, role=Role.ASSISTANT)
        for store, message in ((a, ma), (b, mb)):
            message.append_text("streaming")
            message.add_tool_call(ToolCall(f"call-{message.id}", "run"))
            await store.messages.update(message)
            await store.messages.flush(message.id)
        for store in (a, b, a):
            assert await store.recover() == RecoveryReport()
        assert (await b.messages.get(ma.id)).parts == ma.parts
        assert (await a.messages.get(mb.id)).parts == mb.parts
        assert len(await a.messages.list(sa.id)) == 1


async def test_closed_stores_streaming_message_is_interrupted_on_next_open(db_url: str) -> None:
    async with open_store(db_url) as store:
        session = await store.sessions.create("closing mid-stream")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("half")
        await store.messages.update(message)
    async with open_store(db_url) as store:
        stored = await store.messages.get(message.id)
        assert stored.text == "half"
        assert stored.finish is not None
        assert stored.finish.reason is FinishReason.INTERRUPTED
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(writers_table.c.id))).scalars().all() == [
                store.writer_id
            ]


async def test_a_message_this_store_is_taking_over_is_left_alone(db_url: str) -> None:
    async with open_store(db_url) as first:
        session = await first.sessions.create("take over")
        message = await first.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("first ")
        await first.messages.update(message)
        await first.messages.flush(message.id)
        async with open_store(db_url, debounce=60) as second:
            await kill_lease(first)
            message.append_text("second")
            await second.messages.update(message)  # buffered for a minute
            report = await second.recover()
            assert report.messages_interrupted == 0
            await second.messages.flush(message.id)
            assert await writer_of(second, message.id) == second.writer_id
            assert (await second.messages.get(message.id)).parts == message.parts


async def test_a_message_this_store_wrote_before_a_dead_writer_took_it_over_is_repaired(
    db_url: str,
) -> None:
    """Only a buffered change keeps a message from the sweep: this store's clean copy of a
    message that another writer wrote after it (and then died) does not."""
    async with open_store(db_url) as survivor:
        session = await survivor.sessions.create("taken over, then dead")
        message = await survivor.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("first ")
        await survivor.messages.update(message)
        await survivor.messages.flush(message.id)  # clean, still held (not finished)
        dead = await open_store(db_url)
        try:
            message.append_text("then the other")
            await dead.messages.update(message)
            await dead.messages.flush(message.id)
            await kill_lease(dead)
            report = await survivor.recover()
            assert report.messages_interrupted == 1
            stored = await survivor.messages.get(message.id)
            assert stored.text == "first then the other"
            assert stored.finish is not None and stored.finish.reason is FinishReason.INTERRUPTED
        finally:
            await dead.close()


async def test_corrupt_rows_are_reported_and_skipped(db_url: str) -> None:
    dead = await open_store(db_url)
    try:
        session = await dead.sessions.create("corrupt")
        good = await dead.messages.create(session.id, role=Role.ASSISTANT, parts=[Text("ok")])
        bad = await dead.messages.create(session.id, role=Role.ASSISTANT)
        async with dead.engine.begin() as conn:
            await conn.execute(
                update(messages_table)
                .where(messages_table.c.id == bad.id)
                .values(parts='[{"type": "text", "data": {"text": 1}}')
            )
        async with open_store(db_url) as survivor:
            await kill_lease(dead)
            report = await survivor.recover()
            assert report.corrupt_message_ids == (bad.id,)
            assert report.messages_interrupted == 1
            stored = await survivor.messages.get(good.id)
            assert stored.finish is not None
            assert stored.finish.reason is FinishReason.INTERRUPTED
            again = await survivor.recover()
            assert again.corrupt_message_ids == (bad.id,)  # still reported, still untouched
            assert again.messages_interrupted == 0
    finally:
        await dead.close()


async def test_concurrent_sweeps_repair_once(db_url: str) -> None:
    dead = await open_store(db_url)
    try:
        made = await conversation(dead)
        async with open_store(db_url) as one, open_store(db_url) as two:
            await kill_lease(dead)
            reports = await asyncio.gather(one.recover(), two.recover(), one.recover())
            assert sum(r.messages_interrupted for r in reports) == 1
            assert sum(r.tool_results_added for r in reports) == 2
            listed = await one.messages.list(made["user"].session_id)
            results = [r.tool_call_id for m in listed for r in m.tool_results]
            assert sorted(results) == ["c1", "c2", "c3"]
    finally:
        await dead.close()


async def until(store: Store, condition: Callable[[LeaseState], bool], what: str) -> LeaseState:
    """Wait (bounded) until a heartbeat of ``store``'s lease leaves a state where ``condition``
    holds."""
    try:
        async with asyncio.timeout(10):
            return await until_heartbeat(store, condition)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def test_lease_heartbeats_and_is_removed_on_close(db_url: str) -> None:
    store = await open_store_with(db_url, StoreOptions(lease_ttl=0.3))
    lease = lease_state(store)
    assert lease is not None and lease.running

    async def expiry() -> object:
        async with store.engine.connect() as conn:
            query = select(writers_table.c.expires_at).where(writers_table.c.id == lease.id)
            return (await conn.execute(query)).scalar_one_or_none()

    first = await expiry()
    beaten = await until(store, lambda state: state.heartbeats >= 2, "two heartbeats")
    assert beaten.failures == 0
    assert await expiry() > first  # type: ignore[operator]
    async with store.engine.begin() as conn:  # as if another store swept it
        await conn.execute(delete(writers_table).where(writers_table.c.id == lease.id))
    await until(store, lambda state: state.lapses == 1, "the lapse to be noticed")
    assert await expiry() is not None
    await store.close()
    closed = lease_state(store)
    assert closed is not None and not closed.running
    async with open_store(db_url) as other, other.engine.connect() as conn:
        ids = (await conn.execute(select(writers_table.c.id))).scalars().all()
        assert lease.id not in ids


async def test_lease_ttl_is_checked(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="lease ttl"):
        await open_store_with(sqlite_url, StoreOptions(lease_ttl=0))


def test_live_writer_in_another_process(db_url: str) -> None:
    """A streaming message of a live process is untouched; after it dies, it is repaired."""
    with subprocess.Popen(
        [sys.executable, str(CHILD), "hold", "--url", db_url, "--lease-ttl", "1.0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stderr is not None
            line = child.stdout.readline()
            assert line, child.stderr.read()
            writer_id, session_id, message_id = line.split()
            asyncio.run(_check_live_then_dead(db_url, child, writer_id, session_id, message_id))
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)


async def _check_live_then_dead(
    url: str, child: subprocess.Popen[str], writer_id: str, session_id: str, message_id: str
) -> None:
    async with open_store(url) as store:
        before = await store.messages.get(message_id)
        first_expiry = await lease_expiry(store, writer_id)
        await sleep_past(first_expiry)  # the first lease would have expired by now...
        assert await lease_expiry(store, writer_id) > first_expiry  # ...but it was renewed
        assert await store.recover() == RecoveryReport()
        assert await store.messages.get(message_id) == before
        assert child.stdin is not None
        child.stdin.write("die\n")
        child.stdin.flush()
        await asyncio.to_thread(child.wait, 30)
        await sleep_past(await lease_expiry(store, writer_id))  # the dead child's lease ends
        report = await store.recover()
        assert (report.messages_interrupted, report.tool_results_added) == (1, 1)
        listed = await store.messages.list(session_id)
        assert listed[0].finish is not None
        assert listed[0].finish.reason is FinishReason.INTERRUPTED
        assert [r.tool_call_id for r in listed[1].tool_results] == ["held-call"]
        async with store.engine.connect() as conn:
            ids = (await conn.execute(select(writers_table.c.id))).scalars().all()
            assert writer_id not in ids


async def lease_expiry(store: Store, writer_id: str) -> datetime:
    async with store.engine.connect() as conn:
        query = select(writers_table.c.expires_at).where(writers_table.c.id == writer_id)
        expires: datetime = (await conn.execute(query)).scalar_one()
        return expires


async def sleep_past(moment: datetime) -> None:
    """Sleep until ``moment`` (a lease expiry, by this machine's clock) has passed."""
    await asyncio.sleep(max(0.0, (moment - utc_now()).total_seconds()) + 0.05)


def _upgrade_to(conn: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


# The tables as revision 0001 has them (no writer_id yet).
_OLD_SESSIONS = table(
    "sessions",
    column("id"),
    column("title"),
    column("message_count"),
    column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime),
)
_OLD_MESSAGES = table(
    "messages",
    column("id"),
    column("session_id"),
    column("role"),
    column("parts"),
    column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime),
)


async def test_messages_from_before_the_lease_migration_are_swept_once(db_url: str) -> None:
    engine = create_engine(db_url)
    now = utc_now()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0001")
            await conn.execute(
                insert(_OLD_SESSIONS).values(
                    id="s", title="old", message_count=2, created_at=now, updated_at=now
                )
            )
            for message_id, role in (("m", "assistant"), ("u", "user")):
                await conn.execute(
                    insert(_OLD_MESSAGES).values(
                        id=message_id,
                        session_id="s",
                        role=role,
                        parts='[{"type":"text","data":{"text":"old"}}]',
                        created_at=now,
                        updated_at=now,
                    )
                )
    finally:
        await engine.dispose()
    async with open_store(db_url) as store:
        stored = await store.messages.get("m")
        assert stored.text == "old"
        assert stored.finish is not None
        assert stored.finish.reason is FinishReason.INTERRUPTED
        assert (await store.messages.get("u")).parts == [Text("old")]
        assert await writer_of(store, "m") is None  # rewritten by the sweep
        assert not await in_progress(store, "m")
        assert not await in_progress(store, "u")
        async with store.engine.connect() as conn:
            leases = (await conn.execute(select(writers_table.c.id))).scalars().all()
        assert "pre-0002" not in leases
        assert await store.recover() == RecoveryReport()


# -- sweeping while the store is open -------------------------------------------------------------


async def repaired(sub: Any, message_id: str) -> Message:
    """The repaired state of ``message_id``, from a subscription (bounded wait)."""
    async with asyncio.timeout(10):
        while True:
            event = await sub.receive()
            if event.payload.id == message_id and event.payload.is_finished:
                return event.payload  # type: ignore[no-any-return]


async def test_an_open_store_sweeps_a_writer_that_died_after_it_opened(db_url: str) -> None:
    """No open, no ``recover()`` call: the survivor's heartbeat sees the ended lease and its
    background sweep finishes the message and answers the tool calls."""
    dead = await open_store(db_url)
    try:
        made = await conversation(dead)
        session_id = made["user"].session_id
        async with open_store_with(db_url, StoreOptions(lease_ttl=0.3)) as survivor:
            assert sweeper_state(survivor).sweeps == 0
            async with survivor.messages.subscribe(session_id=session_id) as sub:
                await kill_lease(dead)
                fixed = await repaired(sub, made["streaming"].id)
            assert fixed.finish is not None and fixed.finish.reason is FinishReason.INTERRUPTED
            listed = await survivor.messages.list(session_id)
            results = sorted(r.tool_call_id for m in listed for r in m.tool_results)
            assert results == ["c1", "c2", "c3"]
            swept = sweeper_state(survivor)
            assert swept.sweeps >= 1 and swept.failures == 0
            assert await survivor.recover() == RecoveryReport()  # nothing left to do
            assert sweeper_state(survivor).running
        assert not sweeper_state(survivor).running  # closing stopped it
    finally:
        await dead.close()


async def test_heartbeats_sweep_only_when_a_lease_ended_and_something_changed(
    db_url: str,
) -> None:
    """Cheap while nothing ended: heartbeats that see no ended lease never sweep; a dead
    writer whose only leftover is a corrupt row is swept once, not at every heartbeat."""
    async with open_store_with(db_url, StoreOptions(lease_ttl=0.3)) as store:
        lease = lease_state(store)
        assert lease is not None
        beats = lease.heartbeats
        await until(store, lambda state: state.heartbeats >= beats + 3, "three heartbeats")
        assert sweeper_state(store).sweeps == 0
        dead = await open_store(db_url)
        try:
            session = await dead.sessions.create("corrupt leftovers")
            bad = await dead.messages.create(session.id, role=Role.ASSISTANT)
            async with dead.engine.begin() as conn:
                await conn.execute(
                    update(messages_table)
                    .where(messages_table.c.id == bad.id)
                    .values(parts='[{"type": "text", "data": {"text": 1}}')
                )
            await kill_lease(dead)
            await until(
                store, lambda _: sweeper_state(store).sweeps >= 1, "the sweep of the ended lease"
            )
            report = sweeper_state(store).last_report
            assert report is not None and report.corrupt_message_ids == (bad.id,)
            beats = (await until(store, lambda _: True, "a heartbeat")).heartbeats
            await until(store, lambda state: state.heartbeats >= beats + 3, "three more heartbeats")
            assert sweeper_state(store).sweeps == 1  # nothing changed since: not swept again
        finally:
            await dead.close()


async def test_a_request_sweeps_at_once(db_url: str) -> None:
    """What a dispatcher does after repairing a turn of a dead process: look now (one read),
    sweep if a lease ended; no heartbeat needed (the default one is 10 s away)."""
    dead = await open_store(db_url)
    try:
        made = await conversation(dead)
        async with open_store(db_url) as survivor:
            async with survivor.messages.subscribe(session_id=made["user"].session_id) as sub:
                await kill_lease(dead)
                request_recovery(survivor)
                fixed = await repaired(sub, made["streaming"].id)
            assert fixed.finish is not None and fixed.finish.reason is FinishReason.INTERRUPTED
            lease = lease_state(survivor)
            assert lease is not None and lease.heartbeats == 0
    finally:
        await dead.close()


async def test_a_failed_background_sweep_is_logged_and_retried(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = await open_store(db_url)
    try:
        made = await conversation(dead)
        async with open_store_with(db_url, StoreOptions(lease_ttl=0.3)) as survivor:
            repository = survivor._repository
            real = repository.sweep_abandoned
            failures = 1

            async def flaky(*args: Any) -> Any:
                nonlocal failures
                if failures:
                    failures -= 1
                    raise OSError("database unreachable (injected)")
                return await real(*args)

            repository.sweep_abandoned = flaky  # type: ignore[method-assign]
            async with survivor.messages.subscribe(session_id=made["user"].session_id) as sub:
                with caplog.at_level("WARNING", logger="messagestore"):
                    await kill_lease(dead)
                    fixed = await repaired(sub, made["streaming"].id)  # at a later heartbeat
            assert fixed.finish is not None
            assert sweeper_state(survivor).failures == 1
            assert "recovery sweep failed" in caplog.text
            assert sweeper_state(survivor).running
    finally:
        await dead.close()
