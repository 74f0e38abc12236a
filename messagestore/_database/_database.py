"""The database as a runner of jobs: every transaction is one job that always finishes.

A job is a synchronous function of a ``Tx`` (``_tx``), the whole body of one transaction (or,
on PostgreSQL, of one savepoint of a transaction shared with the jobs queued beside it).
``Database.write(job)`` / ``read(job)`` run it on a worker the database owns and return its
result: a cancelled caller only stops waiting, write jobs run one at a time first in first out,
and a job's ``on_commit`` hook runs on the event loop in commit order, before the caller
resumes, also when the caller was cancelled. The workers (SQLite threads, the PostgreSQL writer
thread, whose jobs queued together share a transaction in savepoints) are watched by loops of
the database's ``Supervisor``: one that dies fails its queued and later jobs with
``BackgroundTaskFailed``. Every job has a deadline (``job_timeout``): a job not committed
by then is rolled back, interrupted and answered with ``DatabaseTimeout``, never committed
later. ``close()`` lets every submitted job finish. The story:
docs/ARCHITECTURE.md, "The database: jobs and transactions".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool

from .._changes import Change
from .._errors import BackgroundTaskFailed, DatabaseTimeout, StoreClosed, StoreReadOnly
from .._loops import check_loop
from .._supervisor import Loop, Supervisor
from ._engine import configure_sqlite_connection, create_engine, is_in_memory, normalize_url
from ._faults import Fault, FaultPlan
from ._stream_cache import StreamCache
from ._tx import Tx

__all__ = [
    "DEFAULT_JOB_TIMEOUT",
    "Database",
    "Job",
    "JobCounts",
    "OnCommit",
    "Revisions",
    "open_database",
]

T = TypeVar("T")
Job = Callable[[Tx], T]
"""The body of one transaction: a synchronous function of a ``Tx``."""
Revisions = tuple[int, int] | None
"""The (first, last) revisions a committed job took (see ``_revisions``), or None."""
OnCommit = Callable[[T, Revisions, Sequence[Change]], None]
"""Runs on the event loop when a job committed: its result, the revisions it took, the
changes it recorded (``Tx.record``)."""

_log = logging.getLogger("messagestore")
DEFAULT_JOB_TIMEOUT = 30.0
"""Seconds a job may take, from its submission to its commit, before its caller gets
``DatabaseTimeout`` (``open_store(..., job_timeout=...)``)."""
_READERS = 2
_PG_READERS = 8
_BATCH = 64  # write jobs one PostgreSQL transaction takes at most


_QUEUED = "queued"  # submitted, not started
_RUNNING = "running"  # its worker runs its body (or holds it in a test's stall)
_COMMITTING = "committing"  # the body returned: the commit is under way, it may no longer expire
_ENDED = "ended"  # committed or rolled back; settled
_EXPIRED = "expired"  # the deadline passed before the commit: it never commits
_UNKNOWN = "unknown"  # the commit was not confirmed within a second deadline (outcome unknown)


class _Ticket(Generic[T]):
    """One submitted job: what to run (read-only or not, for which writer), where its result
    goes, the hook to run on commit, and its deadline.

    The deadline is a timer on the event loop (``arm``). When it fires before the job's commit
    began, the job is expired: its caller gets ``DatabaseTimeout`` (``stored=False``) at once,
    and the worker, which checks at the start of the job and again right before the commit
    (``run``), rolls it back instead of committing — the check and the expiry take the
    ticket's lock, so exactly one of them wins. Whatever the job waits on is interrupted
    (``interrupt``, from the loop's thread: a SQLite statement, the PostgreSQL writer's
    transaction task through its own loop, a read's task, a test's stall) so its worker is
    freed. A job whose commit began is given one more ``timeout`` for the commit; if that
    passes too, its caller is told the outcome is unknown (``stored=None``). A job that
    commits after its caller was answered still runs its commit hook, so the change feed
    announces everything that committed.
    """

    __slots__ = (
        "_lock",
        "_timer",
        "counts",
        "fault",
        "future",
        "interrupt",
        "job",
        "on_commit",
        "read_only",
        "state",
        "timeout",
        "writer_id",
    )

    def __init__(
        self,
        job: Job[T],
        future: asyncio.Future[T],
        on_commit: OnCommit[T] | None,
        *,
        read_only: bool,
        writer_id: str | None,
        timeout: float,
    ):
        self.job = job
        self.future = future
        self.on_commit = on_commit
        self.read_only = read_only
        self.writer_id = writer_id
        self.timeout = timeout
        self.fault: Fault | None = None  # armed by a test (``messagestore.testing``)
        self.counts: JobCounts | None = None  # the database's, counted once committed
        self.state = _QUEUED
        # What ends the job's current wait when it expires; set by its worker while it runs
        # it, called with ``_lock`` held (so never after the worker moved on).
        self.interrupt: Callable[[], object] | None = None
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def operation(self) -> str:
        return "read" if self.read_only else "write"

    @property
    def expired(self) -> bool:
        """True once the deadline passed before the commit began: the job never commits."""
        return self.state == _EXPIRED

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the deadline (loop thread, at submission)."""
        self._timer = loop.call_later(self.timeout, self._expire)

    def timed_out(self) -> DatabaseTimeout:
        """The error of a job whose deadline passed before its commit."""
        return DatabaseTimeout(self.timeout, self.operation)

    def set_interrupt(self, interrupt: Callable[[], object] | None) -> None:
        """The worker starts (a callable) or stops (None) waiting on something
        ``interrupt`` can end."""
        with self._lock:
            self.interrupt = interrupt

    def run(self, connection: Connection, stream_cache: StreamCache | None) -> tuple[T, Tx]:
        """Run the job on a fresh ``Tx`` of ``connection`` (inside its transaction); a
        read-only job gets the worker's ``stream_cache``. Raises ``DatabaseTimeout`` instead
        of running, or instead of returning to the commit, once the job expired."""
        with self._lock:
            if self.state == _EXPIRED:
                raise self.timed_out()
            self.state = _RUNNING
        read_only = self.read_only
        tx = Tx(
            connection,
            writer_id=self.writer_id,
            read_only=read_only,
            stream_cache=stream_cache if read_only else None,
        )
        result = self.job(tx)  # raising: rolled back (an expiry meanwhile says so, truly)
        if self.fault is not None:
            self.fault.after_job()  # a test's injected failure: raised before the commit
        with self._lock:
            if self.state == _EXPIRED:
                raise self.timed_out()  # rolled back: the caller was told so
            self.state = _COMMITTING
        return result, tx

    def _expire(self) -> None:
        """The deadline passed (loop thread): answer the caller, interrupt the job."""
        self._timer = None
        with self._lock:
            if self.state == _COMMITTING:  # the commit is under way: one more deadline for it
                self._timer = self.future.get_loop().call_later(self.timeout, self._unknown)
                return
            if self.state not in (_QUEUED, _RUNNING):
                return
            self.state = _EXPIRED
            self._interrupt()
        if not self.future.done():
            self.future.set_exception(self.timed_out())

    def _unknown(self) -> None:
        """The commit was not confirmed within its own deadline: the outcome is unknown."""
        self._timer = None
        with self._lock:
            if self.state != _COMMITTING:
                return
            self.state = _UNKNOWN
            self._interrupt()
        if not self.future.done():
            self.future.set_exception(DatabaseTimeout(self.timeout, self.operation, stored=None))

    def _interrupt(self) -> None:
        """With the lock held: end what the job waits on (a test's stall, a statement)."""
        if self.fault is not None:
            self.fault.interrupt()
        if self.interrupt is not None:
            try:
                self.interrupt()
            except Exception:
                _log.debug("messagestore: interrupting an expired job failed", exc_info=True)

    def settle(self, outcome: Any, error: BaseException | None) -> None:
        """Runs on the event loop thread: on success the ``Tx``'s ``after_commit`` callbacks
        and the hook first, then the future (unless the deadline already answered it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            self.state = _ENDED
            self.interrupt = None
        result = None
        if error is None:
            result, tx = outcome
            if self.counts is not None:
                self.counts.writes_committed += 1
            for callback in tx.commit_callbacks:
                try:
                    callback()
                except Exception:
                    _log.exception("messagestore: an after-commit callback raised; ignored")
            if self.on_commit is not None:
                try:
                    self.on_commit(cast(T, result), tx.revisions, tx.changes)
                except Exception:  # the transaction committed; a broken hook must not undo that
                    _log.exception("messagestore: a commit hook raised; ignored")
        if self.future.done():
            return
        if error is None:
            self.future.set_result(cast(T, result))
        else:
            self.future.set_exception(error)


class JobCounts:
    """What a database ran, for tests and benchmarks (``messagestore.testing``):
    ``writes_committed`` counts the write jobs that committed (on PostgreSQL, jobs queued
    together share one transaction and each counts)."""

    __slots__ = ("writes_committed",)

    def __init__(self) -> None:
        self.writes_committed = 0


class Database:
    """Runs jobs against one database (see the module docstring). Make it with
    :func:`open_database`."""

    def __init__(self, url: str, dialect: str, job_timeout: float) -> None:
        self.url = url
        self.dialect = dialect
        self.job_timeout = job_timeout
        self._loop = asyncio.get_running_loop()
        # Read jobs share what they read of streaming messages (``_stream_cache``).
        self.stream_cache = StreamCache()
        self._writer_id: str | None = None
        self._outstanding: set[asyncio.Future[Any]] = set()
        self._closed = False
        self._read_only = False
        self._faults: FaultPlan | None = None
        # The workers' owner; a dead worker's kind of job ("write", "read") is refused.
        self.supervisor = Supervisor("database")
        self._refused: dict[str, BackgroundTaskFailed] = {}
        self.counts = JobCounts()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this database (and the store on it) belongs to."""
        return self._loop

    @property
    def writer_id(self) -> str | None:
        """The store's writer-lease id: every job carries it in its ``Tx`` (stamped on the
        messages it writes, and the ``NOTIFY`` source of its commit). None until set."""
        return self._writer_id

    def set_writer_id(self, writer_id: str) -> None:
        """Set the writer id, once (the store took its lease); jobs submitted from now on
        carry it."""
        if self._writer_id is not None:
            raise RuntimeError("the database's writer id is set once")
        self._writer_id = writer_id

    def release_faults(self) -> None:
        """Disarm every fault and release every stalled job: the store is closing, and its
        last writes (the final flush, the lease's end) must not wait behind a test's stall."""
        if self._faults is not None:
            self._faults.close()

    def faults(self) -> FaultPlan:
        """The faults tests arm on this database's next jobs (``messagestore.testing``)."""
        check_loop(self._loop, "faults()")
        if self._faults is None:
            self._faults = FaultPlan(self._loop, read_workers=self.dialect == "sqlite")
        return self._faults

    def refuse_writes(self) -> None:
        """From now on, refuse every write job with ``StoreReadOnly`` (a read-only store)."""
        self._read_only = True

    def submit_write(
        self,
        job: Job[T],
        on_commit: OnCommit[T] | None = None,
        *,
        job_timeout: float | None = None,
    ) -> asyncio.Future[T]:
        """Queue a write job; the returned future settles after it committed or rolled back,
        or with ``DatabaseTimeout`` once its deadline passed (``job_timeout`` seconds, default
        the database's: see ``_Ticket``).

        Cancelling the future only stops whoever waits on it: the job still runs, and
        ``on_commit`` still runs if it commits. A database that refuses writes raises
        ``StoreReadOnly`` here, before anything is queued.
        """
        check_loop(self._loop, "Database.submit_write()")
        self._check_open()
        if self._read_only:
            raise StoreReadOnly()
        ticket = _Ticket(
            job,
            self._loop.create_future(),
            on_commit,
            read_only=False,
            writer_id=self._writer_id,
            timeout=self.job_timeout if job_timeout is None else job_timeout,
        )
        if self._faults is not None:
            ticket.fault = self._faults.take("write")
        ticket.counts = self.counts
        self._track(ticket)
        if self._refused:
            self._refuse(ticket, "write")
        else:
            self._start_write(ticket)
        return ticket.future

    async def write(
        self,
        job: Job[T],
        on_commit: OnCommit[T] | None = None,
        *,
        job_timeout: float | None = None,
    ) -> T:
        """Run ``job`` as one write transaction and return its result (see ``submit_write``)."""
        return await asyncio.shield(self.submit_write(job, on_commit, job_timeout=job_timeout))

    async def read(self, job: Job[T]) -> T:
        """Run ``job`` as one read-only transaction (one consistent snapshot)."""
        check_loop(self._loop, "Database.read()")
        self._check_open()
        ticket = _Ticket(
            job,
            self._loop.create_future(),
            None,
            read_only=True,
            writer_id=self._writer_id,
            timeout=self.job_timeout,
        )
        if self._faults is not None:
            ticket.fault = self._faults.take("read")
        self._track(ticket)
        if self._refused:
            self._refuse(ticket, "read")
        else:
            self._start_read(ticket)
        return await asyncio.shield(ticket.future)

    async def close(self) -> None:
        """Let every submitted job finish, then stop the workers. Idempotent."""
        check_loop(self._loop, "Database.close()")
        if self._closed:
            return
        self._closed = True
        self.release_faults()
        if self._outstanding:
            await asyncio.wait(set(self._outstanding))
        await self._stop()

    def _track(self, ticket: _Ticket[Any]) -> None:
        future = ticket.future
        self._outstanding.add(future)
        future.add_done_callback(self._settled)
        ticket.arm(self._loop)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self._outstanding.discard(future)
        if not future.cancelled():
            # A caller cancelled while its job ran no longer takes the job's error; it is
            # the caller's to see, never asyncio's "exception was never retrieved".
            future.exception()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("database")

    def _refuse(self, ticket: _Ticket[Any], kind: str) -> None:
        """Start the job, unless the worker that would run it died: then fail it at once."""
        refused = self._refused.get(kind)
        if refused is not None:
            ticket.settle(None, refused.again())
        elif kind == "write":
            self._start_write(ticket)
        else:
            self._start_read(ticket)

    def _worker_died(
        self, kinds: tuple[str, ...], held: list[_Ticket[Any]], failure: BackgroundTaskFailed
    ) -> None:
        """A worker died (its supervisor logged it): from now on its kinds of job are refused,
        and ``held`` — the jobs it held or that were queued for it — fail now."""
        for kind in kinds:
            self._refused.setdefault(kind, failure)
        for ticket in held:
            if not ticket.future.done():
                ticket.settle(None, failure.again())

    def _start_write(self, ticket: _Ticket[Any]) -> None:
        raise NotImplementedError

    def _start_read(self, ticket: _Ticket[Any]) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError


# -- SQLite: worker threads ------------------------------------------------------------------


_STOP = object()


class _Worker(threading.Thread):
    """A thread that owns one connection of ``engine`` and runs jobs from a queue, one
    transaction each (the engine decides how a transaction begins: ``_sqlite_engine``).

    Several workers may share one queue (the readers): each job runs on whichever is free.
    ``stream_cache`` is handed to the read-only jobs it runs (the readers').
    ``finished`` settles on the loop when the thread ends: with None once it took a stop from
    its queue, with the exception that ended it otherwise (see ``_watch``).
    """

    def __init__(
        self,
        engine: Engine,
        jobs: SimpleQueue[Any],
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        stream_cache: StreamCache | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._engine = engine
        self._stream_cache = stream_cache
        self._jobs = jobs
        self._loop = loop
        self.finished: asyncio.Future[None] = loop.create_future()
        self.finished.add_done_callback(_retrieve)
        self.holding: _Ticket[Any] | None = None  # the job it runs (settled by the loop)

    @property
    def jobs(self) -> SimpleQueue[Any]:
        return self._jobs

    def run(self) -> None:
        connection: Connection | None = None
        death: BaseException | None = None
        try:
            while True:
                ticket = self._jobs.get()
                if ticket is _STOP:
                    return
                if ticket.expired:  # its caller was answered while it queued: never run it
                    continue
                self.holding = ticket
                if ticket.fault is not None:
                    ticket.fault.crash_worker()  # a test's crash (``messagestore.testing``)
                result: Any = None
                error: BaseException | None = None
                try:
                    if connection is None or connection.invalidated:
                        connection = self._connect(connection)
                    # Past its deadline the job's statement is interrupted (a long query; a
                    # wait for another process's lock ends at the busy timeout instead).
                    raw = cast(sqlite3.Connection, connection.connection.dbapi_connection)
                    ticket.set_interrupt(raw.interrupt)
                    try:
                        with connection.begin():
                            if ticket.fault is not None:
                                ticket.fault.before_job_in_thread()
                            result = ticket.run(connection, self._stream_cache)
                    finally:
                        ticket.set_interrupt(None)
                except BaseException as exc:  # handed to the caller, never lost in the thread
                    error = exc
                if ticket.expired and connection is not None:
                    # An interrupt may have hit its rollback: the next job gets a fresh
                    # connection (closing this one rolls back whatever it still holds).
                    _discard(connection)
                    connection = None
                self._loop.call_soon_threadsafe(ticket.settle, result, error)
                self.holding = None
        except BaseException as exc:  # the thread dies: its supervisor hears it (``finished``)
            death = exc
        finally:
            try:
                if connection is not None:
                    connection.close()
            finally:
                self._loop.call_soon_threadsafe(_end, self.finished, death)

    def _connect(self, old: Connection | None) -> Connection:
        if old is not None:
            _discard(old)
        return self._engine.connect()


def _discard(connection: Connection) -> None:
    try:
        connection.close()
    except Exception:
        _log.debug("messagestore: closing a broken SQLite connection failed", exc_info=True)


def _sqlite_engine(url: str, *, read_only: bool, busy_timeout: float | None = None) -> Engine:
    """A synchronous engine (stdlib ``sqlite3``) for the file or memory database of ``url``.

    Its transactions begin with ``BEGIN IMMEDIATE`` (they take the write lock up front, so two
    writers never both hold a read snapshot and deadlock on upgrade), or, for the readers'
    engine (``read_only``), with a deferred ``BEGIN``: one snapshot, no lock. A lock another
    process holds is waited for up to ``busy_timeout`` seconds (the store's job deadline: a
    job that waits longer has been answered already; its worker is freed for the next one).
    """
    parsed = make_url(url).set(drivername="sqlite")
    memory = is_in_memory(parsed.database)
    if not memory:
        Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_sync_engine(
        parsed,
        poolclass=StaticPool if memory else None,
        connect_args={"check_same_thread": False},
    )
    wal = not memory
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite_connection(dbapi_connection, wal=wal, busy_timeout=busy_timeout)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class _SQLiteDatabase(Database):
    def __init__(self, url: str, job_timeout: float) -> None:
        super().__init__(url, "sqlite", job_timeout)
        memory = is_in_memory(make_url(url).database)
        self._engines = [_sqlite_engine(url, read_only=False, busy_timeout=job_timeout)]
        self._write_jobs: SimpleQueue[Any] = SimpleQueue()
        # An in-memory database is one connection: its one thread runs reads too (on the
        # writer's engine, so they begin IMMEDIATE as its writes do).
        self._read_jobs = self._write_jobs if memory else SimpleQueue()
        self._workers = [
            _Worker(self._engines[0], self._write_jobs, self._loop, name="ms-sqlite-w")
        ]
        if not memory:
            readers = _sqlite_engine(url, read_only=True, busy_timeout=job_timeout)
            self._engines.append(readers)
            self._workers += [
                _Worker(
                    readers,
                    self._read_jobs,
                    self._loop,
                    name="ms-sqlite-r",
                    stream_cache=self.stream_cache,
                )
                for _ in range(_READERS)
            ]
        self._watchers: list[Loop] = []
        for n, worker in enumerate(self._workers):
            worker.start()
            role = "worker" if memory else "writer" if n == 0 else f"reader-{n}"
            self._watchers.append(
                self.supervisor.start(
                    f"sqlite-{role}",
                    functools.partial(_watch, worker),
                    on_stop=functools.partial(worker.jobs.put, _STOP),
                    grace=None,
                    on_death=functools.partial(self._thread_died, worker),
                )
            )

    def _start_write(self, ticket: _Ticket[Any]) -> None:
        self._write_jobs.put(ticket)

    def _start_read(self, ticket: _Ticket[Any]) -> None:
        self._read_jobs.put(ticket)

    def _thread_died(self, worker: _Worker, failure: BackgroundTaskFailed) -> None:
        """A worker thread exited without being told to stop: its queue's jobs fail."""
        kinds = tuple(
            kind
            for kind, queue in (("write", self._write_jobs), ("read", self._read_jobs))
            if queue is worker.jobs
        )
        held = [] if worker.holding is None else [worker.holding]
        while True:
            try:
                queued = worker.jobs.get_nowait()
            except Empty:
                break
            if queued is not _STOP:
                held.append(queued)
        self._worker_died(kinds, held, failure)

    async def _stop(self) -> None:
        # Every worker is told first (readers share a queue: any of them may take any stop),
        # then each is waited for — on the loop, not in an executor thread: this also runs at
        # interpreter exit. Threads that finished their last line are then joined.
        for watcher in self._watchers:
            watcher.request_stop()
        await self.supervisor.stop()
        for worker in self._workers:
            worker.join()
        for engine in self._engines:
            engine.dispose()


async def _watch(worker: _Worker | _PgWriter) -> None:
    """The supervised side of a worker thread: ends when the thread does (raising what
    ended it, if it died)."""
    await asyncio.shield(worker.finished)


def _end(future: asyncio.Future[None], death: BaseException | None) -> None:
    if future.done():
        return
    if death is None:
        future.set_result(None)
    else:
        future.set_exception(death)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Its watcher reports a thread's death; the future itself must never warn."""
    if not future.cancelled():
        future.exception()


# -- PostgreSQL: a writer thread and read tasks ------------------------------------------------


class _PgWriter(threading.Thread):
    """The PostgreSQL writer: a thread running an event loop of its own (asyncpg needs one),
    with its own engine and one connection, off the callers' loop.

    It takes the write jobs queued while it was busy together (up to ``_BATCH``) into one
    transaction, each job in a SAVEPOINT of its own (``_run_batch``). Everything it decides is
    handed back to the callers' loop with ``call_soon_threadsafe``: the jobs of one
    transaction are settled there in one callback, in order. ``finished`` settles on that loop
    when the thread ends: with None once it took a stop from its queue, with the exception
    that ended it otherwise (see ``_watch``).
    """

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="ms-pg-writer", daemon=True)
        self._url = url
        self._caller = loop
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._queue: deque[Any] = deque()  # tickets, or ``_STOP``; under ``_lock``
        self._wake = asyncio.Event()  # set on the writer's loop when the queue grew
        self.finished: asyncio.Future[None] = loop.create_future()
        self.finished.add_done_callback(_retrieve)
        self.holding: list[_Ticket[Any]] = []  # the jobs it runs (settled by the loop)

    def put(self, item: Any) -> None:
        """Queue a ticket (or ``_STOP``); any thread. A thread that already ended leaves it
        queued for whoever noticed the end (``drain``)."""
        with self._lock:
            self._queue.append(item)
        with contextlib.suppress(RuntimeError):  # its loop is closed: the thread ended
            self._loop.call_soon_threadsafe(self._wake.set)

    def drain(self) -> list[_Ticket[Any]]:
        """Take every ticket still queued (the thread ended or is told to stop)."""
        with self._lock:
            queued = [item for item in self._queue if item is not _STOP]
            self._queue.clear()
        return queued

    def run(self) -> None:
        death: BaseException | None = None
        try:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # the thread dies: its supervisor hears it (``finished``)
            death = exc
        finally:
            try:
                self._loop.close()
            finally:
                # A closed callers' loop (RuntimeError): nobody waits any more.
                with contextlib.suppress(RuntimeError):
                    self._caller.call_soon_threadsafe(_end, self.finished, death)

    async def _take(self) -> list[_Ticket[Any]] | None:
        """The next jobs to run together (None: stop). Jobs whose caller was answered while
        they queued are dropped here: they never run."""
        while True:
            with self._lock:
                batch: list[_Ticket[Any]] = []
                while self._queue and len(batch) < _BATCH:
                    item = self._queue[0]
                    if item is _STOP:
                        if batch:
                            break
                        return None
                    self._queue.popleft()
                    if not item.expired:
                        batch.append(item)
                if batch:
                    return batch
                if not self._queue:
                    self._wake.clear()
            await self._wake.wait()

    async def _main(self) -> None:
        engine = create_engine(self._url)
        connection: AsyncConnection | None = None
        try:
            while True:
                batch = await self._take()
                if batch is None:
                    return
                self.holding = batch
                for ticket in batch:
                    if ticket.fault is not None:
                        ticket.fault.crash_worker()  # a test's crash (``messagestore.testing``)
                body = self._loop.create_task(self._write(engine, batch, connection))
                outcomes, connection, again = await body
                if again:  # jobs the cut-off transaction never started: they run next
                    with self._lock:
                        self._queue.extendleft(reversed(again))
                self._caller.call_soon_threadsafe(_settle_all, batch, outcomes)
                self.holding = []
        finally:
            try:
                if connection is not None:
                    await _close_quietly(connection)
            finally:
                await engine.dispose()

    async def _write(
        self,
        engine: AsyncEngine,
        batch: list[_Ticket[Any]],
        connection: AsyncConnection | None,
    ) -> tuple[list[tuple[Any, BaseException | None] | None], AsyncConnection | None, list[Any]]:
        """Run ``batch`` in one transaction on ``connection`` (a fresh one if None): (each
        job's outcome, None for one that runs again; the connection to use next; the jobs to
        run again).

        Cancelled by a job's deadline (``_Ticket.interrupt``), it drops the connection: the
        server rolls the transaction back. The expired job is answered with the timeout;
        jobs that ran before it in the transaction lost their work with it (``DatabaseTimeout``,
        ``stored=False`` — or ``stored=None`` if the commit had been sent); jobs not started
        yet run again in the next transaction.
        """
        progress = _Progress()
        try:
            if connection is None or connection.invalidated:
                connection = await _fresh(engine, connection)
            task = asyncio.current_task()
            assert task is not None
            interrupt = functools.partial(self._loop.call_soon_threadsafe, task.cancel)
            await _run_batch(connection, batch, interrupt, progress)
        except asyncio.CancelledError:
            if connection is not None:
                await _despite_interrupts(_drop(connection))
            if not any(t.expired or t.state == _UNKNOWN for t in batch):
                raise  # no deadline cancelled it: a bug, and the thread ends on it
            return _cut_off(batch, progress), None, [t for t in batch if t.state == _QUEUED]
        except Exception as exc:
            # A failed transaction may leave its connection half way through a protocol
            # exchange: never reuse it.
            if connection is not None:
                await _despite_interrupts(_close_quietly(connection))
            return [(None, exc)] * len(batch), None, []
        return list(progress.outcomes), connection, []


class _Progress:
    """How far a shared transaction got: each job's outcome so far (in order), and whether
    its commit was sent."""

    __slots__ = ("committing", "outcomes")

    def __init__(self) -> None:
        self.outcomes: list[tuple[Any, BaseException | None]] = []
        self.committing = False


async def _despite_interrupts(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end, even if another job's deadline interrupts the writer
    meanwhile (a second cancellation must not leave a connection half dropped)."""
    task = asyncio.ensure_future(cleanup)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])


async def _run_batch(
    connection: AsyncConnection,
    batch: list[_Ticket[Any]],
    interrupt: Callable[[], object],
    progress: _Progress,
) -> None:
    """Run ``batch``'s jobs in one transaction of ``connection`` and commit it; each job's
    outcome goes to ``progress.outcomes``.

    One job alone runs as the whole transaction (its error rolls it back and is raised).
    Several each run in a SAVEPOINT of their own: a job that raises, or whose deadline passed
    before its savepoint was released, is rolled back to it and answered with its error; the
    others commit together. A job's commit begins when its savepoint is released
    (``_Ticket.run``). A job can be interrupted only while it runs or commits (its
    ``interrupt`` is set when it starts): one waiting in the batch that expires is never
    started, one rolled back to its savepoint is done.
    """
    shared = len(batch) > 1
    outcomes = progress.outcomes
    transaction = await connection.begin()
    try:
        for ticket in batch:
            if ticket.expired:  # answered while it waited in the batch: never started
                outcomes.append((None, ticket.timed_out()))
                continue
            ticket.set_interrupt(interrupt)
            if not shared:
                if ticket.fault is not None:
                    ticket.fault.before_job_in_thread()
                outcomes.append((await connection.run_sync(ticket.run, None), None))
                continue
            savepoint = await connection.begin_nested()
            try:
                if ticket.fault is not None:
                    ticket.fault.before_job_in_thread()
                outcome = await connection.run_sync(ticket.run, None)
            except Exception as exc:
                await savepoint.rollback()
                ticket.set_interrupt(None)
                outcomes.append((None, exc))
            else:
                await savepoint.commit()
                outcomes.append((outcome, None))
    except Exception:
        await transaction.rollback()
        raise
    progress.committing = True
    await transaction.commit()


def _cut_off(
    batch: list[_Ticket[Any]], progress: _Progress
) -> list[tuple[Any, BaseException | None] | None]:
    """The outcomes of a transaction a deadline cut off (see ``_PgWriter._write``)."""
    outcomes: list[tuple[Any, BaseException | None] | None] = []
    for n, ticket in enumerate(batch):
        if n < len(progress.outcomes) and progress.outcomes[n][1] is not None:
            outcomes.append(progress.outcomes[n])  # rolled back to its savepoint already
        elif ticket.expired or ticket.state == _UNKNOWN:
            outcomes.append((None, ticket.timed_out()))  # answered at its deadline
        elif ticket.state == _QUEUED:
            outcomes.append(None)  # never started: runs again
        else:  # it ran: its work went with the transaction
            stored = None if progress.committing else False
            outcomes.append((None, DatabaseTimeout(ticket.timeout, "write", stored=stored)))
    return outcomes


def _settle_all(
    batch: list[_Ticket[Any]], outcomes: list[tuple[Any, BaseException | None] | None]
) -> None:
    """On the callers' loop: settle the jobs of one transaction, in order."""
    for ticket, outcome in zip(batch, outcomes, strict=True):
        if outcome is not None:
            ticket.settle(*outcome)


class _PostgresDatabase(Database):
    """Writes run on the writer thread (``_PgWriter``), several queued together in one
    transaction; reads each in a task of its own on a pooled connection of the callers' loop.
    Each job's body (connecting, the transaction, the commit) runs in a task its deadline can
    cancel (``_Ticket.interrupt``): a server that stopped answering, or a lock another
    connection holds, never keeps the writer (or a read slot) beyond the job's deadline. A
    connection whose job was cut off that way is dropped (terminated, not rolled back over a
    connection that may not answer): the server rolls the transaction back when it sees the
    connection end.
    """

    def __init__(self, url: str, job_timeout: float) -> None:
        super().__init__(url, "postgresql", job_timeout)
        self.engine: AsyncEngine = create_engine(url)
        self._writer_thread = _PgWriter(url, self._loop)
        self._writer_thread.start()
        self._writer = self.supervisor.start(
            "postgresql-writer",
            functools.partial(_watch, self._writer_thread),
            on_stop=functools.partial(self._writer_thread.put, _STOP),
            grace=None,
            on_death=self._writer_died,
        )
        self._reads: set[asyncio.Task[None]] = set()
        # Reads at once: fewer than the pool holds, so a burst queues here instead of timing
        # out waiting for a connection.
        self._read_slots = asyncio.Semaphore(_PG_READERS)

    def _start_write(self, ticket: _Ticket[Any]) -> None:
        if self._writer.done():  # stopped: never wait
            ticket.settle(None, StoreClosed("database"))
            return
        self._writer_thread.put(ticket)

    def _start_read(self, ticket: _Ticket[Any]) -> None:
        task = self._loop.create_task(self._run_read(ticket))
        ticket.set_interrupt(task.cancel)
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def _writer_died(self, failure: BackgroundTaskFailed) -> None:
        """The writer ended unexpectedly (or its watcher did): the jobs it held and those
        queued fail, every later write is refused, and a thread still alive is told to stop."""
        writer = self._writer_thread
        held = list(writer.holding)
        held.extend(writer.drain())
        writer.put(_STOP)
        self._worker_died(("write",), held, failure)

    async def _run_read(self, ticket: _Ticket[Any]) -> None:
        result: Any = None
        error: BaseException | None = None
        connection: AsyncConnection | None = None
        try:
            async with self._read_slots:
                if ticket.expired:
                    return
                connection = await self.engine.connect()
                await connection.execution_options(isolation_level="REPEATABLE READ")
                result = await _run_job(connection, ticket, self.stream_cache)
        except asyncio.CancelledError:
            if connection is not None:
                await _drop(connection)
                connection = None
            if not (ticket.expired or ticket.state == _UNKNOWN):
                ticket.settle(None, StoreClosed("database"))
                raise  # not its deadline: the loop shuts down
            error = ticket.timed_out()
        except Exception as exc:
            error = exc
        finally:
            if connection is not None:
                await _close_quietly(connection)
        ticket.settle(result, error)

    async def _stop(self) -> None:
        await self.supervisor.stop()  # the writer's watcher: the thread took its stop
        writer = self._writer_thread
        if not writer.finished.done():  # its watcher died earlier: the thread was told to stop
            writer.put(_STOP)
            await asyncio.wait([writer.finished])
        writer.join()
        for ticket in writer.drain():  # nothing will run what is still queued: fail it
            ticket.settle(None, StoreClosed("database"))
        if self._reads:
            await asyncio.wait(set(self._reads))
        await self.engine.dispose()


async def _run_job(
    connection: AsyncConnection, ticket: _Ticket[Any], stream_cache: StreamCache | None
) -> Any:
    """Run ``ticket``'s job in one transaction of ``connection``: commit if it returns, roll
    back if it raises an error. A cancellation leaves the transaction to the caller, who drops
    the connection (a rollback could wait on a server that no longer answers)."""
    transaction = await connection.begin()
    try:
        if ticket.fault is not None:
            await ticket.fault.before_job()
        result = await connection.run_sync(ticket.run, stream_cache)
    except Exception:
        await transaction.rollback()
        raise
    await transaction.commit()
    return result


async def _fresh(engine: AsyncEngine, old: AsyncConnection | None) -> AsyncConnection:
    if old is not None:
        await _close_quietly(old)
    return await engine.connect()


async def _close_quietly(connection: AsyncConnection) -> None:
    try:
        await connection.close()
    except Exception:
        _log.debug("messagestore: closing a broken PostgreSQL connection failed", exc_info=True)


async def _drop(connection: AsyncConnection) -> None:
    """Terminate a connection whose job was cut off, without a rollback round trip (the
    server rolls back when the connection ends); bounded (a graceful close gets 2 s, then the
    socket is closed). Shielded: a second cancellation must not leave it half dropped."""
    try:
        await asyncio.shield(connection.invalidate())
    except Exception:
        _log.debug("messagestore: dropping a PostgreSQL connection failed", exc_info=True)


def open_database(url: str, job_timeout: float = DEFAULT_JOB_TIMEOUT) -> Database:
    """A ``Database`` for ``url`` (``sqlite+aiosqlite://...`` or ``postgresql+asyncpg://...``)
    whose jobs have ``job_timeout`` seconds each (see ``_Ticket``).

    Must be called in the event loop that will use it.
    """
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return _SQLiteDatabase(url, job_timeout)
    return _PostgresDatabase(url, job_timeout)
