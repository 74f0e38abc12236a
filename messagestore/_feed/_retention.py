"""Tombstone retention: deleted rows are remembered for a while, then forgotten.

A subscription resuming from revision ``r`` needs a tombstone for every deletion after ``r``.
Tombstones older than the retention period (default 7 days) are deleted by a task each store
runs (at open, then every ``PRUNE_EVERY`` seconds); ``feed_state.compacted_revision`` then
rises to the newest pruned one, and a resume from before it raises ``RevisionCompacted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from .._database._repository import Repository
from .._model import utc_now
from .._supervisor import Loop, Supervisor

__all__ = ["DEFAULT_RETENTION", "PRUNE_EVERY", "Retention"]

DEFAULT_RETENTION = timedelta(days=7)
PRUNE_EVERY = 3600.0
_log = logging.getLogger("messagestore")


class Retention:
    """Prunes tombstones older than ``retention`` now and then; a loop of the store's
    supervisor."""

    def __init__(self, repository: Repository, retention: timedelta) -> None:
        self._repository = repository
        self.retention = retention
        self._stop = asyncio.Event()
        self._running: Loop | None = None
        self.pruned = 0

    def start(self, supervisor: Supervisor) -> None:
        self._running = supervisor.start("retention", self._run, on_stop=self._stop.set)

    async def prune(self) -> int:
        """Delete tombstones older than the retention period now; return how many."""
        count = await self._repository.prune_tombstones(utc_now() - self.retention)
        self.pruned += count
        return count

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.prune()
            except Exception as exc:
                _log.warning("messagestore: pruning tombstones failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PRUNE_EVERY)

    async def close(self) -> None:
        """Stop pruning (a prune in flight stops being waited for); idempotent."""
        self._stop.set()
        running, self._running = self._running, None
        if running is not None:
            await running.stop()
