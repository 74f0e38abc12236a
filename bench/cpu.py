"""The CPU budget of a stream cell: process CPU per accepted delta, and where it goes.

``CpuBudget.install(store)`` wraps the store's write path at a few points (the caller's
``update()``, the flusher's tick and the commit hook, the feed's ``announce``, and on PostgreSQL
the write job's body task) so each charges the loop thread's CPU (``time.thread_time``) of its
own steps to a bucket, exclusive of nested buckets; threads other than the loop's (SQLite's
workers) are read through their CPU clocks. ``start()`` and ``stop()`` bracket the window; the
PostgreSQL backends' CPU comes from ``/proc/<pid>/stat`` (``server_start``/``server_stop``).
Only one ``update()`` call in ``UPDATE_SAMPLE_EVERY`` is timed (scaled up), to perturb little.
What each figure means: BENCHMARKS.md, "CPU budget per delta".
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

from sqlalchemy import text

from messagestore import Message, Store

__all__ = ["UPDATE_SAMPLE_EVERY", "CpuBudget", "thread_cpu_seconds"]

UPDATE_SAMPLE_EVERY = int(os.environ.get("MSBENCH_CPU_SAMPLE_EVERY", "8"))
"""Time one ``update()`` call in this many; 0 times none (``bench.profile_cell`` sets that through
``MSBENCH_CPU_SAMPLE_EVERY``: py-spy sees the clock reads out of all proportion)."""

UPDATE, TICK, FEED = "update", "tick", "feed"

# process CPU, the buckets' seconds, update() calls, timed calls, the threads' CPU clocks
_Snapshot = tuple[float, dict[str, float], int, int, dict[int, tuple[str, float]]]


class _Account:
    """Exclusive thread-CPU per bucket on the loop thread: a nested region pauses its parent.
    A region entered on another thread is not charged here (``enter`` says so): that thread's
    whole CPU is read from its own clock (a writer moved off the loop, say)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {UPDATE: 0.0, TICK: 0.0, FEED: 0.0}
        self.thread = threading.get_ident()
        self._stack: list[str] = []
        self._mark = 0.0

    def enter(self, bucket: str) -> bool:
        """Start charging ``bucket``; False (and nothing to ``exit``) off the loop thread."""
        if threading.get_ident() != self.thread:
            return False
        now = time.thread_time()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._stack.append(bucket)
        self._mark = now
        return True

    def exit(self) -> None:
        now = time.thread_time()
        self.seconds[self._stack.pop()] += now - self._mark
        self._mark = now


class _Charged(collections.abc.Coroutine[Any, Any, Any]):
    """A coroutine whose every step (``send``/``throw``) is charged to a bucket: the CPU of
    its own steps only, not of whatever the loop runs while it is suspended."""

    __slots__ = ("_account", "_bucket", "_coro")

    def __init__(self, coro: Any, account: _Account, bucket: str) -> None:
        self._coro = coro
        self._account = account
        self._bucket = bucket

    def send(self, value: Any) -> Any:
        charged = self._account.enter(self._bucket)
        try:
            return self._coro.send(value)
        finally:
            if charged:
                self._account.exit()

    def throw(self, *args: Any) -> Any:
        charged = self._account.enter(self._bucket)
        try:
            return self._coro.throw(*args)
        finally:
            if charged:
                self._account.exit()

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> _Charged:
        return self

    def __next__(self) -> Any:
        return self.send(None)


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live Python thread of this process: ident -> (name, seconds)."""
    seconds: dict[int, tuple[str, float]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        with contextlib.suppress(OSError, ValueError, OverflowError):
            clock = time.pthread_getcpuclockid(thread.ident)
            seconds[thread.ident] = (thread.name, time.clock_gettime(clock))
    return seconds


def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (``/proc/<pid>/stat``), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuBudget:
    """Bracket a window and report its CPU per delta (see the module docstring)."""

    def __init__(self) -> None:
        self._account = _Account()
        self._loop_thread = threading.get_ident()
        self._calls = 0
        self._sampled = 0
        self._store: Store | None = None
        self._start: _Snapshot | None = None
        self._end: _Snapshot | None = None
        self._server: dict[int, float] = {}
        self.server_seconds: float | None = None

    # -- wrapping ----------------------------------------------------------------------------

    def install(self, store: Store) -> None:
        """Wrap the store's write path (call before any update; on the loop thread)."""
        self._store = store
        self._loop_thread = self._account.thread = threading.get_ident()
        account = self._account
        messages = store.messages
        update = messages.update

        def sampled_update(message: Message) -> Coroutine[Any, Any, None]:
            self._calls += 1
            if not UPDATE_SAMPLE_EVERY or self._calls % UPDATE_SAMPLE_EVERY:
                return update(message)
            self._sampled += 1
            return _Charged(update(message), account, UPDATE)

        messages.update = sampled_update  # type: ignore[method-assign]
        writer = messages._writer
        writer._committed = _charge_call(writer._committed, account, TICK)  # type: ignore[method-assign]
        writer._announce = _charge_call(writer._announce, account, FEED)
        flusher = writer._flusher
        if flusher is not None:
            flusher._tick = _charge_coroutine(flusher._tick, account, TICK)
        database = store._database
        body = getattr(database, "_write", None)
        if body is not None:  # PostgreSQL: the write job's body runs as a task on the loop
            database._write = _charge_coroutine(body, account, TICK)  # type: ignore[attr-defined]

    # -- the window --------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        return (
            time.process_time(),
            dict(self._account.seconds),
            self._calls,
            self._sampled,
            thread_cpu_seconds(),
        )

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> None:
        self._end = self._snapshot()

    async def _server_pids(self) -> list[int]:
        store = self._store
        if store is None or store._database.dialect != "postgresql":
            return []
        async with store.engine.connect() as conn:
            query = text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            return [int(pid) for pid in (await conn.execute(query)).scalars()]

    async def server_start(self) -> None:
        """Mark the CPU of the cell database's PostgreSQL backends (no-op on SQLite)."""
        for pid in await self._server_pids():
            seconds = _proc_cpu_seconds(pid)
            if seconds is not None:
                self._server[pid] = seconds

    async def server_stop(self) -> None:
        pids = await self._server_pids()
        if not pids and not self._server:
            return
        total = 0.0
        readable = False
        for pid in pids:
            seconds = _proc_cpu_seconds(pid)
            if seconds is not None:
                readable = True
                total += seconds - self._server.get(pid, 0.0)
        self.server_seconds = total if readable else None

    # -- figures -----------------------------------------------------------------------------

    def figures(self, deltas: int, window_s: float) -> dict[str, Any]:
        """The budget in microseconds per accepted delta (None without deltas).

        ``deltas``: the cell's count of streamed (non-terminal) updates. Its span differs from
        ``start``..``stop`` by about one pass of the driver at either edge (the window opens
        after the first pass; the streams' finishes begin just before it closes): about one
        delta per stream, 1/(R x T) of the deltas.
        """
        if self._start is None or self._end is None:  # the window never opened
            return {}
        process0, buckets0, calls0, sampled0, threads0 = self._start
        process1, buckets1, calls1, sampled1, threads1 = self._end
        process = process1 - process0
        spent = {k: buckets1[k] - buckets0.get(k, 0.0) for k in buckets1}
        calls, sampled = calls1 - calls0, sampled1 - sampled0
        update = spent[UPDATE] * calls / sampled if sampled else None
        threads: dict[str, float] = {}
        for ident, (name, seconds) in threads1.items():
            if ident == self._loop_thread:
                continue
            before = threads0.get(ident, (name, 0.0))[1]
            threads[name] = threads.get(name, 0.0) + seconds - before
        database = sum(threads.values())
        tick = spent[TICK] + database
        feed = spent[FEED]
        other = process - (update or 0.0) - tick - feed

        def per_delta(seconds: float | None) -> float | None:
            return None if seconds is None or not deltas else seconds / deltas * 1e6

        return {
            "cpu_process_s": process,
            "cpu_cores": process / window_s if window_s > 0 else None,
            "cpu_us_per_delta": per_delta(process),
            "cpu_update_us_per_delta": per_delta(update),
            "cpu_tick_us_per_delta": per_delta(tick),
            "cpu_tick_loop_us_per_delta": per_delta(spent[TICK]),
            "cpu_tick_threads_us_per_delta": per_delta(database),
            "cpu_feed_us_per_delta": per_delta(feed),
            "cpu_other_us_per_delta": per_delta(other),
            "cpu_server_us_per_delta": per_delta(self.server_seconds),
            "cpu_update_sampled": sampled,
            "cpu_threads_s": threads,
        }


def _charge_call(function: Callable[..., Any], account: _Account, bucket: str) -> Any:
    def charged(*args: Any, **kwargs: Any) -> Any:
        entered = account.enter(bucket)
        try:
            return function(*args, **kwargs)
        finally:
            if entered:
                account.exit()

    return charged


def _charge_coroutine(function: Callable[..., Any], account: _Account, bucket: str) -> Any:
    def charged(*args: Any, **kwargs: Any) -> Any:
        return _Charged(function(*args, **kwargs), account, bucket)

    return charged
