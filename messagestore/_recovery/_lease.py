"""The writer lease: how other stores tell a live writer from one that died.

Each writable store inserts a ``writers`` row that expires ``ttl`` seconds later (default 30 s);
a heartbeat, a loop of the store's supervisor, pushes the expiry forward every ``ttl / 3`` and
also reads which other leases ended, for the sweeper. ``close()`` ends the lease at once. A
failed heartbeat is logged, counted in ``failures`` and retried within a second. The trade: a
crashed writer's messages look streaming for up to ``ttl``; a live writer blocked for longer
may be judged dead. Times use the database's clock (``_clock``). The story:
docs/ARCHITECTURE.md, "Recovery".
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Callable

from .._database._lease_jobs import WriterInfo
from .._database._repository import Repository
from .._model import new_id
from .._supervisor import Loop, Supervisor

__all__ = ["DEFAULT_LEASE_TTL", "Lease"]

DEFAULT_LEASE_TTL = 30.0
_RETRY_AFTER_FAILURE = 1.0
_CLOSE_GRACE = 5.0

_log = logging.getLogger("messagestore")


class Lease:
    """One store's writer lease; ``start()`` it, ``close()`` it."""

    def __init__(
        self,
        repository: Repository,
        *,
        ttl: float = DEFAULT_LEASE_TTL,
        heartbeat: bool = True,
        on_ended: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        if not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
            raise ValueError(f"lease ttl must be a positive number of seconds, not {ttl!r}")
        self._repository = repository
        self.info = WriterInfo(new_id(), os.getpid(), socket.gethostname())
        self.ttl = float(ttl)
        self.interval = self.ttl / 3
        self._heartbeat = heartbeat
        self._on_ended = on_ended
        self._stop = asyncio.Event()
        self._running: Loop | None = None
        self._closed = False
        self.heartbeats = 0
        self.failures = 0
        self.lapses = 0
        self.last_error: Exception | None = None
        self._beaten: asyncio.Future[None] | None = None

    @property
    def id(self) -> str:
        """The writer id stamped on every message this store writes."""
        return self.info.id

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The heartbeat task (None before ``start()`` or without heartbeats)."""
        return None if self._running is None else self._running.task

    async def start(self, supervisor: Supervisor) -> None:
        """Insert the lease row and start heartbeating (a loop of ``supervisor``).

        Stopping the loop lets a heartbeat in flight finish (cancelling mid-transaction helps
        nobody), but not for long: one stuck on an unreachable server is cancelled.
        """
        await self._repository.register_writer(self.info, self.ttl)
        if self._heartbeat:
            self._running = supervisor.start(
                "lease-heartbeat", self._run, on_stop=self._stop.set, grace=_CLOSE_GRACE
            )

    async def _run(self) -> None:
        delay = self.interval
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                delay = await self.beat()
            else:
                return

    async def beaten(self) -> None:
        """Wait until the next heartbeat ended (renewed or failed) and was counted."""
        if self._beaten is None:
            self._beaten = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._beaten)

    async def beat(self) -> float:
        """Renew the lease now, and report the ended writers it saw to ``on_ended``; return
        the seconds until the next heartbeat is due."""
        try:
            return await self._beat()
        finally:
            beaten, self._beaten = self._beaten, None
            if beaten is not None and not beaten.done():
                beaten.set_result(None)

    async def _beat(self) -> float:
        try:
            renewal = await self._repository.renew_writer(self.info, self.ttl)
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            retry = min(self.interval, _RETRY_AFTER_FAILURE)
            _log.warning(
                "writer lease %s: heartbeat failed (retry in %.1fs): %r", self.id, retry, exc
            )
            return retry
        self.heartbeats += 1
        if not renewal.held:
            self.lapses += 1
            _log.warning(
                "writer lease %s had expired and was removed by a recovery sweep; renewed",
                self.id,
            )
        if renewal.ended and self._on_ended is not None:
            self._on_ended(renewal.ended)
        return self.interval

    async def close(self) -> None:
        """Stop heartbeating and end the lease (see ``Repository.retire_writer``). Idempotent.

        A failure to end it is logged, not raised: the row expires by itself.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._running is not None:
            await self._running.stop()  # with its grace (see ``start``)
        try:
            await self._repository.retire_writer(self.id)
        except Exception as exc:
            _log.warning("writer lease %s: could not end the lease: %r", self.id, exc)
