"""The flusher: one owned task that runs a tick function when a tick is due. A plain loop.

Ticks, not per-id timers: the first change buffered while nothing is dirty arms a tick
``debounce`` later (later changes in the window do not move it); the tick writes every dirty
message in one transaction; the writer then arms the next tick ``debounce`` after the previous
one started if anything is still dirty. So a change waits at most one window plus the write,
and transactions per second stay near ``1 / debounce`` however many messages stream.

Backoff: while writes fail, ``fail()`` pushes the next tick out exponentially (``debounce`` up
to 2 s) and no new change can arm an earlier one; ``succeed()`` ends the backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .._supervisor import Loop, Supervisor

__all__ = ["Flusher"]

_MAX_BACKOFF = 2.0
_log = logging.getLogger("messagestore")


class Flusher:
    """Runs ``tick`` when armed; owned by one writer, which ``start``s it on the store's
    supervisor (which stops it when the store closes)."""

    def __init__(self, debounce: float, tick: Callable[[], Awaitable[None]]) -> None:
        self.debounce = debounce
        self._tick = tick
        self._loop = asyncio.get_running_loop()
        self._due: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._failures = 0
        self._backoff_until = 0.0
        self._running: Loop | None = None

    @property
    def failures(self) -> int:
        """Consecutive failed writes (0 once one succeeds)."""
        return self._failures

    def start(self, supervisor: Supervisor) -> None:
        self._running = supervisor.start("flusher", self._run)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return None if self._running is None else self._running.task

    def arm(self, due: float) -> None:
        """Make sure a tick happens no later than ``due`` (but not before a backoff ends)."""
        due = max(due, self._backoff_until)
        if self._due is not None and self._due <= due:
            return
        self._set(due)

    def arm_in(self, seconds: float) -> None:
        self.arm(time.monotonic() + seconds)

    def fail(self) -> float:
        """A write failed: back off; return the seconds until the retry."""
        self._failures += 1
        retry_in = self.backoff(self._failures)
        self._backoff_until = time.monotonic() + retry_in
        self._set(self._backoff_until)
        return retry_in

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (``debounce`` doubling,
        at most 2 s)."""
        return float(min(max(self.debounce, 0.01) * 2 ** (failures - 1), _MAX_BACKOFF))

    def succeed(self) -> None:
        self._failures = 0
        self._backoff_until = 0.0

    def _set(self, due: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._due = due
        self._handle = self._loop.call_later(max(0.0, due - time.monotonic()), self._wake.set)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # This tick supersedes any other one already scheduled.
            if self._handle is not None:
                self._handle.cancel()
            self._due = self._handle = None
            try:
                await self._tick()
            except Exception:  # a bug must not end the flusher silently: log, keep going
                _log.exception("messagestore flusher: unexpected error in a tick")

    def disarm(self) -> None:
        """No tick is due any more (the writer closed); the loop waits until it is stopped."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = None

    async def stop(self) -> None:
        """Disarm, then stop the loop and wait for it; idempotent."""
        self.disarm()
        if self._running is not None:
            await self._running.stop()
