"""``open_store``: one database, its schema brought up to date, and the two services on it.

``open_store(...)`` is awaited or used with ``async with``. A store owns its database, its
services, the change feed and its brokers, the writer lease and its background loops (all
started through its ``Supervisor``: a dead one makes writes raise ``BackgroundTaskFailed``),
and closes them in order: the sweeper, the write path (flushed), the feed, the loops newest
first, the lease, the database. ``read_only=True`` checks instead of migrating, takes no lease,
runs no recovery and refuses writes with ``StoreReadOnly``. ``Store.transaction`` is the port
features use. The story: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pubsub import Broker

from ._config import resolve_url
from ._database._database import DEFAULT_JOB_TIMEOUT, Database, open_database
from ._database._engine import create_engine, is_in_memory, normalize_url, sqlite_file
from ._database._migrate import check_current, current_revision_job, upgrade_job
from ._database._repository import Repository
from ._database._tx import Tx
from ._errors import StoreClosed, StoreReadOnly
from ._feed._deltas import conflate as conflate_deltas
from ._feed._feed import Feed
from ._feed._retention import DEFAULT_RETENTION, Retention
from ._loops import check_loop
from ._messages import MessageService
from ._model import Message, Session
from ._recovery._lease import DEFAULT_LEASE_TTL, Lease
from ._recovery._sweep import RecoveryReport, recover
from ._recovery._sweeper import Sweeper
from ._sessions import SessionService
from ._supervisor import Supervisor

__all__ = [
    "DEFAULT_DEBOUNCE",
    "DEFAULT_JOB_TIMEOUT",
    "Store",
    "StoreOptions",
    "database_url",
    "open_store",
    "open_store_with",
]

DEFAULT_DEBOUNCE = 0.033
MIGRATION_TIMEOUT = 600.0
"""Seconds the migration on open may take at least, whatever the store's ``job_timeout``."""
_log = logging.getLogger("messagestore")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Everything ``open_store`` can be told; the private knobs are for tests and benchmarks."""

    debounce: float = DEFAULT_DEBOUNCE
    feed_retention: timedelta = DEFAULT_RETENTION
    lease_ttl: float = DEFAULT_LEASE_TTL
    idle_release: float = 30.0
    read_only: bool = False
    job_timeout: float = DEFAULT_JOB_TIMEOUT


class Store:
    """An open message store: ``sessions``, ``messages``, ``close()``."""

    def __init__(self, url: str, database: Database, options: StoreOptions) -> None:
        self.url = url
        self._database = database
        self._options = options
        # Owns every background loop of the store; writes are refused once an essential one
        # (or a worker of the database) died.
        supervisor = self._supervisor = Supervisor("store")
        supervisor.watch(database.supervisor)
        repository = self._repository = Repository(database)
        repository.check_writable = supervisor.check
        message_broker: Broker[Message] = Broker(
            key=_message_key, topic=_message_topic, conflate=conflate_deltas
        )
        session_broker: Broker[Session] = Broker(key=_session_key)
        self._brokers = (message_broker, session_broker)
        self._feed = Feed(repository, message_broker, session_broker, supervisor)
        repository.set_announce(self._feed.announce)
        self.messages = MessageService(
            repository,
            self._feed,
            message_broker,
            supervisor=supervisor,
            debounce=options.debounce,
            idle_release=options.idle_release,
            read_only=options.read_only,
        )
        self.sessions = SessionService(
            repository, self._feed, session_broker, self.messages, read_only=options.read_only
        )
        self._retention = Retention(repository, options.feed_retention)
        self._lease: Lease | None = None
        self._sweeper = Sweeper(self._sweep_in_background, self._ended_writers)
        self._closing_hooks: list[Callable[[], None]] = []
        self._engine: AsyncEngine | None = None
        self._closed = False
        self._feature_states: dict[object, Any] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this store belongs to: the one it was opened on.

        Call the store from this loop only (other callers get ``WrongEventLoop``); from another
        thread or loop, schedule onto it: ``asyncio.run_coroutine_threadsafe(coro, store.loop)``.
        """
        return self._database.loop

    def feature_state(self, key: object, factory: Callable[[], _T]) -> _T:
        """The state a feature built on this store keeps per store, made by ``factory()`` on
        first use and kept for the life of the store.

        For the layers on top of the store (the adapters' session ids, locks and recordings):
        state that belongs to one store lives on it, instead of in a module-global registry
        keyed by store. ``key`` names the feature (a module-level object of its own).
        """
        check_loop(self._database.loop, "Store.feature_state()")
        state = self._feature_states.get(key)
        if state is None:
            state = self._feature_states[key] = factory()
        return state

    @property
    def engine(self) -> AsyncEngine:
        """A SQLAlchemy async engine on the same database, for inspection and tests; the
        services never use it. Not available for an in-memory database."""
        if self._engine is None:
            if self._database.dialect == "sqlite" and is_in_memory(make_url(self.url).database):
                raise RuntimeError("an in-memory database has no second engine")
            self._engine = create_engine(self.url)
        return self._engine

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    def writer_id(self) -> str | None:
        """This store's writer-lease id, stamped on every message it writes."""
        return None if self._lease is None else self._lease.id

    async def transaction(self, job: Callable[[Tx], _T], *, write: bool = True) -> _T:
        """Run ``job(tx)`` as one transaction of the store's database and return its result.

        ``job`` is a synchronous function of a :class:`Tx` — the whole body of the transaction,
        run on the database's own worker (a thread on SQLite), never on the event loop: it
        runs SQL on ``tx.conn`` (SQLAlchemy Core) and returns. With ``write`` (the default) it
        runs in the store's write order, after every write submitted before it (the store's
        own included), with the revision counter locked first as in every write of the
        store; messages it creates with ``store.messages.create_in(tx, ...)`` are announced
        through the change feed when it commits, in commit order. With ``write=False`` it
        reads one consistent snapshot and must not write. It commits when ``job`` returns and
        rolls back when it raises (the exception is raised here). A caller that is cancelled
        only stops waiting: the transaction commits or rolls back as a whole.
        """
        check_loop(self._database.loop, "Store.transaction()")
        if self._closed:
            raise StoreClosed()
        return await self._repository.transaction(job, write=write)

    async def _start(self) -> None:
        """Migrate, take a writer lease, sweep what ended writers left, start pruning and
        sweeping in the background. Read-only: check the schema is current, nothing more."""
        if self._options.read_only:
            self._database.refuse_writes()
            heads = await self._database.read(current_revision_job)
            check_current(heads, _where(self.url))
            return
        # A migration may rewrite big tables: it gets the longer of its own deadline and
        # the store's.
        await self._database.write(
            upgrade_job, job_timeout=max(self._options.job_timeout, MIGRATION_TIMEOUT)
        )
        lease = Lease(self._repository, ttl=self._options.lease_ttl, on_ended=self._sweeper.notice)
        self._lease = lease
        await lease.start(self._supervisor)
        self._database.set_writer_id(lease.id)
        await self.recover()
        self._retention.start(self._supervisor)
        self._sweeper.start(self._supervisor)

    async def recover(self) -> RecoveryReport:
        """Repair messages left half-written by stores that stopped; idempotent.

        Assistant messages last written by a store whose writer lease ended — it expired (the
        process crashed, was killed, or hung longer than the TTL) or was retired (the store
        closed) — and that have no finish, get ``Finish(FinishReason.INTERRUPTED)``; their
        tool calls that no result in the session answers get an error ``ToolResult`` in a new
        ``Role.TOOL`` message. Messages of live stores, this one included, are never touched,
        nor those this store has a change of buffered (it is taking them over). Runs on open,
        and in the background whenever this store's heartbeat sees a lease that ended; call
        it to sweep at once. Repairs are announced through the change feed like every other
        change.
        """
        check_loop(self._database.loop, "Store.recover()")
        if self._closed:
            raise StoreClosed()
        if self._options.read_only:
            raise StoreReadOnly("Store.recover()")
        assert self._lease is not None, "recover() before the store was started"
        keep = self.messages._writer.unwritten_ids()
        return await recover(self._repository, self._lease.id, keep=keep)

    def _when_closing(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` (synchronously, once) when ``close()`` begins; return the function
        that unregisters it. For parts built on the store that wait on it — a running
        dispatcher wakes the waiters of its receipts, which then raise ``StoreClosed``."""
        hooks = self._closing_hooks
        hooks.append(hook)

        def unregister() -> None:
            if hook in hooks:
                hooks.remove(hook)

        return unregister

    def _request_recovery(self) -> None:
        """Look for writers whose lease ended now, and sweep in the background if there are
        any (a dispatcher repaired a turn of a dead process: its reply may be streaming)."""
        self._sweeper.poke()

    async def _sweep_in_background(self) -> RecoveryReport:
        if self._closed:
            return RecoveryReport()
        return await self.recover()

    async def _ended_writers(self) -> tuple[str, ...]:
        assert self._lease is not None
        return await self._repository.ended_writers(self._lease.id)

    async def close(self) -> None:
        """Flush everything, end every subscription, release the database. Idempotent.

        If the final flush fails, the store is closed all the same and the failure is raised.
        Rows another process deleted meanwhile are logged, not raised: closing always closes.
        """
        check_loop(self._database.loop, "Store.close()")
        if self._closed:
            return
        self._closed = True
        self._database.release_faults()  # a test's stalled job must not hold the close
        hooks = list(self._closing_hooks)
        self._closing_hooks.clear()
        for hook in hooks:
            try:
                hook()
            except Exception:
                _log.exception("messagestore: a hook run when the store closes raised; ignored")
        self._sweeper.stop()
        try:
            await self.messages.close()
        finally:
            await self._feed.close()  # the newest loops: the feed's reader and listener
            await self._supervisor.stop()  # then the others, newest first
            await self._sweeper.close()
            self.sessions.close()
            await self._feed.close()
            for broker in self._brokers:
                broker.shutdown()
            await self._retention.close()
            if self._lease is not None:
                await self._lease.close()
            await self._database.close()
            if self._engine is not None:
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


def _message_key(message: Message) -> str:
    return message.id


def _message_topic(message: Message) -> str:
    return message.session_id


def _session_key(session: Session) -> str:
    return session.id


async def _open(url: str | None, options: StoreOptions) -> Store:
    debounce = options.debounce
    if not isinstance(debounce, int | float) or isinstance(debounce, bool) or math.isnan(debounce):
        raise ValueError(f"debounce must be a number of seconds, not {debounce!r}")
    job_timeout = options.job_timeout
    if (
        not isinstance(job_timeout, int | float)
        or isinstance(job_timeout, bool)
        or not math.isfinite(job_timeout)
        or job_timeout <= 0
    ):
        raise ValueError(
            f"job_timeout must be a positive, finite number of seconds, not {job_timeout!r}"
        )
    resolved = resolve_url(url)
    if options.read_only:
        path = sqlite_file(resolved)
        if path is not None and not path.exists():
            raise FileNotFoundError(f"no database at {path} (a read-only store creates none)")
    database = open_database(resolved, float(job_timeout))
    store = Store(resolved, database, options)
    try:
        await store._start()
    except BaseException:
        await store.close()
        raise
    return store


class _StoreOpener:
    """What ``open_store`` returns: await it for a ``Store``, or use it with ``async with``."""

    def __init__(self, url: str | None, options: StoreOptions) -> None:
        self._args = (url, options)
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
    feed_retention: timedelta | float = DEFAULT_RETENTION,
    read_only: bool = False,
    job_timeout: float = DEFAULT_JOB_TIMEOUT,
) -> _StoreOpener:
    """Open the store at ``url`` (default: ``MESSAGESTORE_URL`` or the embedded SQLite file).

    The schema is migrated to the newest revision first. ``debounce`` is the write window in
    seconds; ``0`` or less writes every ``update()`` synchronously. ``feed_retention`` (a
    ``timedelta`` or seconds, default 7 days) is how long deletions stay resumable. The store
    takes a writer lease and runs ``Store.recover()``, and again in the background whenever
    its heartbeat sees another store's lease end.

    ``read_only=True`` opens a store for looking only (inspection tools, a live tail): no
    migration — a schema other than the newest raises ``SchemaTooOld`` (run
    ``messagestore db upgrade``) or ``SchemaTooNew`` —, no writer lease, no recovery, no
    pruning of tombstones, and every write raises ``StoreReadOnly``. A missing SQLite file
    raises ``FileNotFoundError`` instead of being created. Reads, ``snapshot()`` and
    ``subscribe()`` work as usual.

    ``job_timeout`` (seconds, default 30) bounds every transaction the store runs — each read,
    write, delete, flush, the dispatcher's and ``Store.transaction``'s, the migration on open —
    from its submission to its commit (the migration on open gets at least 10 minutes). One
    that is not done by then (a lock another process
    holds, a PostgreSQL server that stopped answering) raises ``DatabaseTimeout`` in its
    caller and is rolled back (``stored=False``); only a commit already sent to PostgreSQL
    that is not confirmed within a second ``job_timeout`` gives ``stored=None``: the outcome is
    unknown. On SQLite the wait for another process's lock is also cut to ``job_timeout`` when
    that is shorter than the 30 s busy timeout. ``ValueError`` unless it is a positive, finite
    number.
    """
    if not isinstance(read_only, bool):
        raise ValueError(f"read_only must be True or False, not {read_only!r}")
    options = StoreOptions(
        debounce=debounce,
        feed_retention=_td(feed_retention),
        read_only=read_only,
        job_timeout=job_timeout,
    )
    return open_store_with(url, options)


def database_url(url: str | None = None) -> str:
    """The URL ``open_store(url)`` opens: ``url``, else ``MESSAGESTORE_URL``, else the embedded
    SQLite file, with its asyncio driver (``sqlite://`` becomes ``sqlite+aiosqlite://``,
    ``postgresql://`` ``postgresql+asyncpg://``). ``ValueError`` names a malformed URL or an
    unsupported database. Opens nothing."""
    return normalize_url(resolve_url(url))


def open_store_with(url: str | None, options: StoreOptions) -> _StoreOpener:
    """``open_store`` with every option, the private ones included (tests, benchmarks)."""
    return _StoreOpener(url, options)


def _td(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    raise ValueError(f"feed_retention must be a timedelta or positive seconds, not {value!r}")


def _where(url: str) -> str:
    """Where the database of ``url`` lives, for messages: the SQLite file, else the URL with
    its password hidden."""
    path = sqlite_file(url)
    if path is not None:
        return str(path)
    return make_url(normalize_url(url)).render_as_string(hide_password=True)
