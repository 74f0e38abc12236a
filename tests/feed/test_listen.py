"""The LISTEN connection's handshake under cancellation (``_feed._listen._connect``).

Cancelling asyncpg in the middle of its handshake leaves an error inside asyncpg that nobody
sees, so a cancelled ``_connect`` lets the handshake end and closes what it opened; a second
cancellation cuts that grace short. A fake ``asyncpg`` module stands in for the driver so each
step is driven by events.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from messagestore._feed import _listen

WAIT = 5


class _FakeConnection:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


class _FakeDriver:
    """``connect()`` waits until the test lets it finish; records what happened to it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.cancelled = False
        self.connection = _FakeConnection()

    async def connect(self, _dsn: str, **_options: Any) -> _FakeConnection:
        self.started.set()
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.connection


async def test_a_cancelled_connect_lets_the_handshake_end_and_closes_it() -> None:
    driver = _FakeDriver()
    task = asyncio.ensure_future(_listen._connect(SimpleNamespace(connect=driver.connect), "x"))
    async with asyncio.timeout(WAIT):
        await driver.started.wait()
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done(), "the cancellation must wait for the handshake"
    driver.finish.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    assert not driver.cancelled
    assert driver.connection.terminated


async def test_a_second_cancellation_cuts_the_grace_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_listen, "_CANCEL_GRACE", 60.0)
    driver = _FakeDriver()
    task = asyncio.ensure_future(_listen._connect(SimpleNamespace(connect=driver.connect), "x"))
    async with asyncio.timeout(WAIT):
        await driver.started.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    for _ in range(3):  # the handshake's own task takes its cancellation
        await asyncio.sleep(0)
    assert driver.cancelled, "the handshake was left running after the second cancellation"
    assert not driver.connection.terminated


async def test_a_failed_handshake_after_a_cancellation_leaves_no_unseen_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing(_dsn: str, **_options: Any) -> Any:
        started.set()
        await go.wait()
        raise ConnectionError("refused")

    started, go = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(_listen._connect(SimpleNamespace(connect=failing), "x"))
    async with asyncio.timeout(WAIT):
        await started.wait()
    task.cancel()
    await asyncio.sleep(0)
    go.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    with caplog.at_level("ERROR", logger="asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


class _ListenConnection(_FakeConnection):
    """A connection whose ``LISTEN`` never answers when ``hang`` (a server gone silent)."""

    def __init__(self, hang: bool) -> None:
        super().__init__()
        self.hang = hang

    def add_termination_listener(self, _callback: Any) -> None:
        pass

    async def add_listener(self, _channel: str, _callback: Any) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def execute(self, _query: str) -> str:
        return "SELECT 1"


async def test_a_listen_that_never_answers_is_given_up_and_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first connection's ``LISTEN`` never answers: it is given up after the round-trip
    bound and replaced, and the feed is hinted once the new one listens."""
    connections: list[_ListenConnection] = []

    async def connect(_dsn: str, **_options: Any) -> _ListenConnection:
        connections.append(_ListenConnection(hang=not connections))
        return connections[-1]

    monkeypatch.setitem(sys.modules, "asyncpg", SimpleNamespace(connect=connect))
    monkeypatch.setattr(_listen, "_CONNECT_TIMEOUT", 0.05)
    hinted = asyncio.Event()
    feed = SimpleNamespace(hint=lambda revision=None, source=None: hinted.set())
    task = asyncio.ensure_future(_listen._listen_postgres("postgresql+asyncpg://u@h/db", feed))
    try:
        async with asyncio.timeout(WAIT):
            await hinted.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(connections) == 2
    assert connections[0].terminated
