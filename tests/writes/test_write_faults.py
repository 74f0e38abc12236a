"""Write faults: the buffered state survives them, they are reported, and everything lands.

* SQLite: the write lock held by another connection (a short busy timeout turns the wait into
  "database is locked"), and a disk I/O error injected into the repository's write;
* PostgreSQL: every connection of the store killed with ``pg_terminate_backend`` mid-stream,
  and (only with ``MESSAGESTORE_TEST_PG_RESTART=1``, as it disturbs every other user of the
  server) the server stopped and started again;
* two processes streaming into one SQLite file: no "database is locked" at all.

While a fault lasts: timer-fired writes keep the buffered state and retry with exponential
backoff, ``write_failed`` and ``stats().write_failures`` report it, ``flush`` raises
``WriteFailed``. Once it clears, the database equals the last accepted state, and the flusher
and lease tasks are still alive.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from messagestore import (
    FinishReason,
    Message,
    Role,
    Store,
    ToolCall,
    WriteFailed,
    batch_written,
    open_store,
    write_failed,
)
from messagestore._database import _engine as engine_module
from messagestore._store import StoreOptions, open_store_with
from messagestore.testing import faults, flusher_running, lease_state, until_heartbeat
from tests.support.paths import SUPPORT
from tests.support.processes import Processes

LOAD_CHILD = SUPPORT / "load_child.py"
PG_RESTART = os.environ.get("MESSAGESTORE_TEST_PG_RESTART") == "1"


class Recorder:
    """Collects ``write_failed`` / ``batch_written`` signals; lets a test wait for the next."""

    def __init__(self) -> None:
        self.failures: list[dict[str, Any]] = []
        self.batches = 0
        self._changed = asyncio.Event()

    def on_failure(self, sender: object, **kw: Any) -> None:
        self.failures.append(kw)
        self._changed.set()

    def on_batch(self, sender: object, **kw: Any) -> None:
        self.batches += 1
        self._changed.set()

    async def wait_for(self, what: str, condition: Any, within: float = 10) -> None:
        async def until() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), within)
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}")


@contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    write_failed.connect(recorder.on_failure)
    batch_written.connect(recorder.on_batch)
    try:
        yield recorder
    finally:
        write_failed.disconnect(recorder.on_failure)
        batch_written.disconnect(recorder.on_batch)


def tasks_alive(store: Store) -> None:
    assert flusher_running(store), "the flusher task died"
    lease = lease_state(store)
    assert lease is not None and lease.running, "lease died"


async def stream(store: Store, message: Message, count: int, tag: str) -> None:
    for i in range(count):
        message.append_text(f"<{tag}{i}>")
        await store.messages.update(message)
        await asyncio.sleep(0.003)


async def assert_landed(store: Store, *messages: Message) -> None:
    for message in messages:
        stored = await store.messages.get(message.id)
        assert stored.parts == message.parts


def check_backoff(failures: list[dict[str, Any]]) -> None:
    delays = [f["retry_in"] for f in failures]
    assert all(b >= a for a, b in itertools.pairwise(delays)), delays
    assert max(delays) <= 2.0


async def test_sqlite_write_lock_held_elsewhere(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 20)
    path = make_url(sqlite_url).database
    assert path is not None
    with recording() as rec:
        async with open_store(sqlite_url) as store:
            session = await store.sessions.create("locked")
            message = await store.messages.create(session.id, role=Role.ASSISTANT)
            await stream(store, message, 5, "a")
            await store.messages.flush(message.id)
            durable = message.clone()
            blocker = sqlite3.connect(path, isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                await stream(store, message, 30, "b")
                await rec.wait_for("three timer-fired failures", lambda: len(rec.failures) >= 3)
                with pytest.raises(WriteFailed) as caught:
                    await store.messages.flush(message.id)
                assert "database is locked" in str(caught.value.__cause__)
                message.add_finish(FinishReason.END_TURN)
                with pytest.raises(WriteFailed):
                    await store.messages.update(message)  # terminal: written now, or raises
                stats = store.messages.stats()
                assert stats.write_failures == len(rec.failures) >= 5
                assert stats.pending_messages == 1
                assert (await store.messages.get(message.id)).parts == durable.parts
                assert all(message.id in f["message_ids"] for f in rec.failures)
                check_backoff(rec.failures)
                tasks_alive(store)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            # No flush: the timer path retries by itself once the lock is free.
            await rec.wait_for(
                "the retry to land", lambda: store.messages.stats().pending_messages == 0
            )
            await assert_landed(store, message)
            tasks_alive(store)
            failures_during, batches = len(rec.failures), rec.batches
            message.append_text("<healthy>")
            await store.messages.update(message)
            await rec.wait_for("the next tick", lambda: rec.batches > batches)
            assert len(rec.failures) == failures_during  # healthy again: no more failures
            await assert_landed(store, message)


async def test_injected_io_error(db_url: str) -> None:
    with recording() as rec:
        async with open_store(db_url) as store:
            session = await store.sessions.create("io")
            messages = [
                await store.messages.create(session.id, role=Role.ASSISTANT) for _ in range(3)
            ]
            # Every write job fails inside its transaction (rolled back) until cleared.
            disk = faults(store).fail_next(
                kind="write", error=sqlite3.OperationalError("disk I/O error"), times=None
            )
            await asyncio.gather(*(stream(store, m, 20, str(n)) for n, m in enumerate(messages)))
            await rec.wait_for("two failures", lambda: len(rec.failures) >= 2)
            with pytest.raises(WriteFailed, match="disk I/O error"):
                await store.messages.flush_all()
            assert store.messages.stats().pending_messages == 3
            check_backoff(rec.failures)
            tasks_alive(store)
            assert disk.count >= 2
            disk.clear()
            await rec.wait_for(
                "the retry to land", lambda: store.messages.stats().pending_messages == 0
            )
            await assert_landed(store, *messages)
            assert store.messages.stats().write_failures == len(rec.failures)
            tasks_alive(store)


async def test_a_raising_signal_receiver_does_not_stop_the_flusher(sqlite_url: str) -> None:
    committed = asyncio.Event()
    failed = asyncio.Event()

    def on_batch(sender: object, **kw: Any) -> None:
        committed.set()

    def on_failed(sender: object, **kw: Any) -> None:
        failed.set()

    def bad_receiver(sender: object, **kw: Any) -> None:
        raise RuntimeError("telemetry exporter crashed")

    batch_written.connect(on_batch)  # first: receivers run in the order they connected
    write_failed.connect(on_failed)
    write_failed.connect(bad_receiver)
    batch_written.connect(bad_receiver)
    try:
        async with open_store(sqlite_url) as store:
            session = await store.sessions.create("telemetry")
            message = await store.messages.create(session.id, role=Role.ASSISTANT)
            # Every write fails until the flusher's batch has failed once: a fault armed for
            # the next write alone may be taken by the lease heartbeat instead.
            failure = faults(store).fail_next(
                kind="write", error=sqlite3.OperationalError("disk I/O error"), times=None
            )
            await stream(store, message, 10, "x")
            async with asyncio.timeout(10):
                await failed.wait()  # the batch failed and both raising receivers ran
            failure.clear()
            async with asyncio.timeout(10):  # the flusher retries by itself
                while True:
                    committed.clear()
                    stats = store.messages.stats()
                    if stats.transactions and not stats.pending_messages:
                        break
                    await committed.wait()
            tasks_alive(store)
            assert failure.count >= 1
            await assert_landed(store, message)
    finally:
        batch_written.disconnect(on_batch)
        write_failed.disconnect(on_failed)
        write_failed.disconnect(bad_receiver)
        batch_written.disconnect(bad_receiver)


async def test_heartbeat_failures_are_logged_and_retried(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store_with(db_url, StoreOptions(lease_ttl=0.3)) as store:
        # Nothing else writes meanwhile: the heartbeats are the write jobs that fail.
        failing = faults(store).fail_next(
            kind="write", error=sqlite3.OperationalError("disk I/O error"), times=None
        )
        with caplog.at_level("WARNING", logger="messagestore"):
            async with asyncio.timeout(10):  # the heartbeat keeps retrying
                lease = await until_heartbeat(store, lambda state: state.failures >= 2)
        assert isinstance(lease.last_error, sqlite3.OperationalError)
        assert "heartbeat failed" in caplog.text
        tasks_alive(store)
        failing.clear()
        beats = lease.heartbeats
        async with asyncio.timeout(10):  # and recovers once the fault clears
            await until_heartbeat(store, lambda state: state.heartbeats > beats)
        tasks_alive(store)


async def _terminate_other_backends(url: str) -> int:
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            killed = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return len(killed.all())
    finally:
        await admin.dispose()


async def _agent(store: Store, session_id: str, n: int, deltas: int, errors: list[str]) -> Message:
    message = await store.messages.create(session_id, role=Role.ASSISTANT)
    for i in range(deltas):
        message.append_text(f"<{n}.{i}>")
        try:
            await store.messages.update(message)
            if i == deltas // 2:
                message.add_tool_call(ToolCall(f"c{n}", "run", "{}", finished=True))
                await store.messages.update(message)
        except WriteFailed as exc:  # a terminal write hit the fault; the state stays buffered
            errors.append(repr(exc))
        await asyncio.sleep(0.005)
    message.add_finish(FinishReason.END_TURN)
    try:
        await store.messages.update(message)
    except WriteFailed as exc:
        errors.append(repr(exc))
    return message


async def _flush_when_back(store: Store, within: float = 60) -> None:
    """flush_all until the database is back; each failed attempt is the fault, still there."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            await store.messages.flush_all()
            return
        except WriteFailed:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.postgres
async def test_postgres_connections_terminated_mid_stream(postgres_url: str) -> None:
    with recording() as rec:
        async with open_store_with(
            postgres_url, StoreOptions(debounce=0.01, lease_ttl=0.6)
        ) as store:
            session = await store.sessions.create("terminated")
            errors: list[str] = []
            agents = asyncio.gather(*(_agent(store, session.id, n, 150, errors) for n in range(4)))
            killed = 0
            for _ in range(10):
                await asyncio.sleep(0.1)
                killed += await _terminate_other_backends(postgres_url)
            messages = await agents
            await _flush_when_back(store)
            await assert_landed(store, *messages)
            tasks_alive(store)
            lease = lease_state(store)
            assert lease is not None
            beats = lease.heartbeats
            async with asyncio.timeout(10):  # the lease recovered too
                lease = await until_heartbeat(store, lambda state: state.heartbeats > beats)
            print(
                f"pg_terminate_backend: {killed} connections killed, "
                f"{store.messages.stats().write_failures} write failures "
                f"({len(rec.failures)} signalled), {len(errors)} terminal updates raised, "
                f"{lease.failures} heartbeat failures"
            )
            assert killed > 0
            assert store.messages.stats().write_failures == len(rec.failures)


async def _pg_ctl(action: str) -> None:
    versions = sorted(os.listdir("/etc/postgresql"))
    proc = await asyncio.create_subprocess_exec(
        "pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0, f"pg_ctlcluster {action} failed"


@pytest.mark.postgres
@pytest.mark.skipif(
    not PG_RESTART,
    reason="stops the PostgreSQL server for everyone: set MESSAGESTORE_TEST_PG_RESTART=1 "
    "(.ci/run does) to run it",
)
async def test_postgres_server_restart(postgres_url: str) -> None:
    with recording() as rec:
        async with open_store_with(postgres_url, StoreOptions(debounce=0.01, lease_ttl=3)) as store:
            session = await store.sessions.create("restart")
            message = await store.messages.create(session.id, role=Role.ASSISTANT)
            await stream(store, message, 10, "before")
            await store.messages.flush(message.id)
            await _pg_ctl("stop")
            try:
                await stream(store, message, 20, "down")
                await rec.wait_for("failures while down", lambda: len(rec.failures) >= 2)
                with pytest.raises(WriteFailed):
                    await store.messages.flush(message.id)
                message.add_finish(FinishReason.END_TURN)
                with pytest.raises(WriteFailed):
                    await store.messages.update(message)
                check_backoff(rec.failures)
                tasks_alive(store)
            finally:
                await _pg_ctl("start")
            await rec.wait_for(
                "the retry to land",
                lambda: store.messages.stats().pending_messages == 0,
                within=60,
            )
            await assert_landed(store, message)
            tasks_alive(store)


def test_two_processes_on_one_sqlite_file(tmp_path: Path, processes: Processes) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    children = [
        processes.popen(
            [sys.executable, str(LOAD_CHILD), "--url", url, "--name", f"p{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=180)
        assert "locked" not in out + err, err[-3000:]
        assert child.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    for report in outputs:
        assert report["errors"] == []
        assert report["failures"] == []
        assert report["write_failures"] == 0
        assert report["heartbeat_failures"] == 0
        assert report["heartbeats"] > 0
        assert report["reads"] > 0
        assert len(report["messages"]) == 16  # 8 assistant + 8 tool messages
    asyncio.run(_check_shared(url, outputs))


async def _check_shared(url: str, outputs: list[dict[str, Any]]) -> None:
    async with open_store(url) as store:
        for report in outputs:
            listed = await store.messages.list(report["session"])
            assistants = [m for m in listed if m.role is Role.ASSISTANT]
            assert len(assistants) == 8
            for message in assistants:
                assert message.finish is not None
                assert message.finish.reason is FinishReason.END_TURN  # never swept
                n = message.tool_calls[0].id[1:]
                assert message.text == "".join(f"<{n}.{i}>" for i in range(200))
