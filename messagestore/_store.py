"""``open_store``: one database, its schema brought up to date, and the two services on it.

``open_store(...)`` can be awaited or used with ``async with`` (as ``aiosqlite.connect`` can)::

    store = await open_store()
    ...
    await store.close()

    async with open_store("postgresql+asyncpg://localhost/chat") as store:
        ...
"""

from __future__ import annotations

import math
from collections.abc import Generator
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from ._config import resolve_url
from ._database._engine import create_engine
from ._database._migrate import upgrade
from ._database._repository import Repository
from ._errors import StoreClosed
from ._messages import MessageService
from ._recovery._lease import DEFAULT_LEASE_TTL, Lease
from ._recovery._sweep import RecoveryReport, recover
from ._sessions import SessionService
from ._writes._writer import CommitMode

__all__ = ["DEFAULT_DEBOUNCE", "Store", "open_store"]

DEFAULT_DEBOUNCE = 0.033


class Store:
    """An open message store: ``sessions``, ``messages``, ``close()``."""

    def __init__(self, url: str, engine: AsyncEngine, *, debounce: float, **writer: Any) -> None:
        self.url = url
        self._engine = engine
        repository = self._repository = Repository(engine)
        self._lease: Lease | None = None
        self.messages = MessageService(repository, debounce=debounce, **writer)
        self.sessions = SessionService(repository, self.messages.delete_with_session)
        self._closed = False

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy async engine (for inspection; the services do all writing)."""
        return self._engine

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    def writer_id(self) -> str | None:
        """This store's writer-lease id, stamped on every message it writes."""
        return None if self._lease is None else self._lease.id

    async def _start(self, lease_ttl: float) -> None:
        """Take a writer lease, then sweep what ended writers left (see ``recover``)."""
        # A single shared connection (in-memory SQLite) cannot take a concurrent heartbeat,
        # and no other process can see that database anyway.
        heartbeat = not isinstance(self._engine.pool, StaticPool)
        lease = Lease(self._repository, ttl=lease_ttl, heartbeat=heartbeat)
        self._lease = lease
        await lease.start()
        self._repository.writer_id = lease.id
        await self.recover()

    async def recover(self) -> RecoveryReport:
        """Repair messages left half-written by stores that stopped; idempotent.

        Assistant messages last written by a store whose writer lease ended — it expired (the
        process crashed, was killed, or hung longer than the TTL) or was retired (the store
        closed) — and that have no finish, get
        ``Finish(FinishReason.INTERRUPTED)``; their tool calls that no result in the session
        answers get an error ``ToolResult`` in a new ``Role.TOOL`` message. Messages of live
        stores, this one included, are never touched. Runs on open; call it again to sweep
        stores that died since. Changes are published (must-deliver) to subscribers.
        """
        if self._closed:
            raise StoreClosed()
        assert self._lease is not None, "recover() before the store was started"
        writer = self.messages._writer
        return await recover(
            self._repository,
            self._lease.id,
            keep=lambda message_id: writer.last_accepted(message_id) is not None,
            broker=self.messages.broker,
        )

    async def close(self) -> None:
        """Flush everything, end every subscription, dispose the engine. Idempotent.

        If the final flush fails, the store is closed all the same and the failure is raised.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.messages.close()
        finally:
            self.sessions.close()
            if self._lease is not None:
                await self._lease.close()
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _open(
    url: str | None, debounce: float, writer: dict[str, Any], lease_ttl: float = DEFAULT_LEASE_TTL
) -> Store:
    if not isinstance(debounce, int | float) or math.isnan(debounce):
        raise ValueError(f"debounce must be a number of seconds, not {debounce!r}")
    resolved = resolve_url(url)
    engine = create_engine(resolved)
    try:
        await upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    store = Store(resolved, engine, debounce=float(debounce), **writer)
    try:
        await store._start(lease_ttl)
    except BaseException:
        await store.close()
        raise
    return store


class _StoreOpener:
    """What ``open_store`` returns: await it for a ``Store``, or use it with ``async with``."""

    def __init__(
        self, url: str | None, debounce: float, writer: dict[str, Any], lease_ttl: float
    ) -> None:
        self._args = (url, debounce, writer, lease_ttl)
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Store:
        self._store = await _open(*self._args)
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open_store(
    url: str | None = None,
    *,
    debounce: float = DEFAULT_DEBOUNCE,
    _commit_mode: CommitMode = CommitMode.GROUP,
    _idle_release: float = 30.0,
    _lease_ttl: float = DEFAULT_LEASE_TTL,
) -> _StoreOpener:
    """Open the store at ``url`` (default: ``MESSAGESTORE_URL`` or the embedded SQLite file).

    The schema is migrated to the newest revision first. ``debounce`` is the write window in
    seconds; ``0`` or less writes every ``update()`` synchronously. The store takes a writer
    lease (``_lease_ttl`` seconds, renewed every third of it) and runs ``Store.recover()``.
    """
    writer = {"commit_mode": _commit_mode, "idle_release": _idle_release}
    return _StoreOpener(url, debounce, writer, _lease_ttl)
