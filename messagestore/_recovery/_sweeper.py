"""The recovery sweep while a store is open: repair what writers that died since left.

Each heartbeat of this store's lease reads which other leases ended and calls ``notice``; a
dispatcher that repaired a dead process's turn calls ``poke``. If any lease ended the task
sweeps at once (``Store.recover``), so a dead writer's messages are finished within its TTL plus
one heartbeat. Cheap while nothing ended; a sweep that changed nothing is not repeated for the
same writers; a failed one is logged and retried. A loop of the store's supervisor, stopped
first when the store closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from .._supervisor import Loop, Supervisor
from ._sweep import RecoveryReport

__all__ = ["Sweeper"]

_log = logging.getLogger("messagestore")


class Sweeper:
    """Sweeps in the background when told that writers ended (see the module docstring)."""

    def __init__(
        self,
        sweep: Callable[[], Awaitable[RecoveryReport]],
        find_ended: Callable[[], Awaitable[tuple[str, ...]]],
    ) -> None:
        self._sweep = sweep
        self._find_ended = find_ended
        self._wake = asyncio.Event()
        self._noticed: frozenset[str] = frozenset()
        self._look = False
        # Ended writers the last sweep could do nothing about: not swept again for them alone.
        self._quiet: frozenset[str] = frozenset()
        self._running: Loop | None = None
        self._closed = False
        self.sweeps = 0
        self.failures = 0
        self.last_error: Exception | None = None
        self.last_report: RecoveryReport | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The sweeping task (None before ``start()`` and after ``close()``)."""
        return None if self._running is None else self._running.task

    def start(self, supervisor: Supervisor) -> None:
        self._running = supervisor.start("recovery-sweeper", self._run)

    def notice(self, ended: Iterable[str]) -> None:
        """A heartbeat saw these writers' leases ended: sweep unless nothing changed since a
        sweep that could do nothing about them."""
        ids = frozenset(ended)
        if self._closed or ids <= self._quiet:
            return
        self._noticed |= ids
        self._wake.set()

    def poke(self) -> None:
        """Look for ended writers now (one read) and sweep if there are any."""
        if self._closed:
            return
        self._look = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._once()
            except Exception as exc:  # never end silently: log, wait for the next notice
                self.failures += 1
                self.last_error = exc
                _log.warning("recovery sweep failed (retried at the next heartbeat): %r", exc)

    async def _once(self) -> None:
        ended, self._noticed = self._noticed, frozenset()
        if self._look:
            self._look = False
            ended = frozenset(await self._find_ended())
        if not ended:
            return
        report = await self._sweep()
        self.sweeps += 1
        self.last_report = report
        changed = (
            report.messages_interrupted
            or report.tool_results_added
            or report.messages_checked
            or report.writers_removed
        )
        self._quiet = frozenset() if changed else ended
        if report.messages_interrupted or report.tool_results_added:
            _log.info(
                "recovery: %d message(s) interrupted and %d tool call(s) answered, left by "
                "writers whose lease ended",
                report.messages_interrupted,
                report.tool_results_added,
            )

    def stop(self) -> None:
        """Stop sweeping now (synchronously): no sweep starts any more. The task ends when
        ``close()`` (or the store's supervisor) stops it; a sweep in flight then stops being
        waited for (its transaction commits or rolls back as a whole)."""
        self._closed = True

    async def close(self) -> None:
        """``stop()``, then stop the task and wait for it to end. Idempotent."""
        self.stop()
        running, self._running = self._running, None
        if running is not None:
            await running.stop()
