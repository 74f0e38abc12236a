"""Faults a test arms on a database: fail, stall or crash its next jobs (``messagestore.testing``).

A fault is taken by a job when it is submitted (on the loop, in submission order) and acts where
the job runs: a ``Failure`` raises its error after the job ran, before the commit (rolled
back); a ``Stall`` holds the job with its transaction open until ``release()`` or its deadline
(``job_timeout``: rolled back, ``DatabaseTimeout``); a ``Crash``
kills the worker that takes the job, whose kind of job then fails with
``BackgroundTaskFailed``. A database without faults pays one attribute check per job; closing
the store disarms every fault and releases every stall.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Literal, TypeVar

from .._errors import StoreClosed
from .._futures import resolve

__all__ = ["Crash", "Failure", "Fault", "FaultPlan", "JobKind", "Stall"]

JobKind = Literal["write", "read"]
_F = TypeVar("_F", bound="Fault")
_KINDS: tuple[JobKind, ...] = ("write", "read")


class Fault:
    """Something armed for the next job(s) of one kind; see ``Failure`` and ``Stall``."""

    def __init__(self, kind: JobKind) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._cleared = False

    @property
    def cleared(self) -> bool:
        """True once ``clear()`` was called (or the database closed)."""
        return self._cleared

    def clear(self) -> None:
        """Disarm: jobs that have not run yet (even ones that already took it) run normally."""
        self._cleared = True

    def _take(self) -> bool:
        """Called on the loop thread when a job is submitted: True if that job takes it, and
        whether it stays armed for the next one (see ``_spent``)."""
        raise NotImplementedError

    def _spent(self) -> bool:
        """True when no further job may take it."""
        raise NotImplementedError

    def before_job_in_thread(self) -> None:
        """Runs in a worker thread before the job, inside its transaction."""

    async def before_job(self) -> None:
        """Runs in a worker task on the loop before the job, inside its transaction."""

    def after_job(self) -> None:
        """Runs where the job ran, after it, before the commit."""

    def crash_worker(self) -> None:
        """Runs in the worker that took the job, before the job; raising ends the worker."""

    def interrupt(self) -> None:
        """The job that took this fault passed its deadline: stop holding it (any thread)."""

    def _close(self) -> None:
        """The database closes: nothing may wait on this fault any more."""
        self._cleared = True


class Failure(Fault):
    """Raises ``error`` in the next ``times`` jobs of its kind, after each ran, before the
    commit (rolled back). ``count`` is how many jobs it failed so far."""

    def __init__(self, kind: JobKind, error: Exception, times: int | None) -> None:
        super().__init__(kind)
        self.error = error
        self._left = times
        self._count = 0

    @property
    def count(self) -> int:
        """Jobs this fault has failed so far."""
        return self._count

    def _take(self) -> bool:
        if self._cleared:
            return False
        if self._left is not None:
            self._left -= 1
        return True

    def _spent(self) -> bool:
        return self._cleared or (self._left is not None and self._left <= 0)

    def after_job(self) -> None:
        with self._lock:
            if self._cleared:
                return
            self._count += 1
        raise self.error

    def __repr__(self) -> str:
        return f"Failure({self.kind!r}, {self.error!r}, failed={self._count})"


class Stall(Fault):
    """Holds the next job of its kind in its worker, transaction open, until ``release()``.

    ``await stall.started()`` returns once the job is held (``StoreClosed`` if the database
    closed first); ``release()`` lets it go on (also before it started: it then does not
    wait). ``clear()`` is ``release()``.
    """

    def __init__(self, kind: JobKind, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(kind)
        self._loop = loop
        self._taken = False
        self._released = threading.Event()
        self._started: asyncio.Future[None] = loop.create_future()
        self._let_go: asyncio.Future[None] = loop.create_future()

    async def started(self) -> None:
        """Wait until a job is held by this stall."""
        await asyncio.shield(self._started)

    @property
    def held(self) -> bool:
        """True while a job is held here."""
        return self._started.done() and not self._released.is_set()

    def release(self) -> None:
        """Let the held job (or the one that will take this stall) go on. Idempotent; may be
        called from any thread."""
        self._cleared = True
        self._released.set()
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(resolve, self._let_go)

    clear = release

    def interrupt(self) -> None:
        """The held job passed its deadline: it goes on, to be rolled back (a hang the
        database's deadline ends, as it ends a statement waiting on a lock)."""
        self.release()

    def _take(self) -> bool:
        if self._cleared or self._taken:
            return False
        self._taken = True
        return True

    def _spent(self) -> bool:
        return self._cleared or self._taken

    def before_job_in_thread(self) -> None:
        self._loop.call_soon_threadsafe(resolve, self._started)
        self._released.wait()

    async def before_job(self) -> None:
        resolve(self._started)
        await asyncio.shield(self._let_go)

    def _close(self) -> None:
        if not self._started.done():
            self._started.set_exception(StoreClosed("database"))
            self._started.exception()  # retrieved: a test that never waited is not warned
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released" if self._released.is_set() else "armed"
        return f"Stall({self.kind!r}, {state})"


class Crash(Fault):
    """Kills the worker that takes the next job of its kind, before the job starts, by
    raising ``error`` there (see the module docstring). ``crashed`` is True once it has."""

    def __init__(self, kind: JobKind, error: BaseException) -> None:
        super().__init__(kind)
        self.error = error
        self._taken = False
        self.crashed = False

    def _take(self) -> bool:
        if self._cleared or self._taken:
            return False
        self._taken = True
        return True

    def _spent(self) -> bool:
        return self._cleared or self._taken

    def crash_worker(self) -> None:
        with self._lock:
            if self._cleared:
                return
            self.crashed = True
        raise self.error

    def __repr__(self) -> str:
        return f"Crash({self.kind!r}, {self.error!r}, crashed={self.crashed})"


class FaultPlan:
    """The faults armed on one database, in the order they were armed, per kind of job."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, read_workers: bool = True) -> None:
        self._loop = loop
        self._read_workers = read_workers
        self._armed: dict[JobKind, deque[Fault]] = {kind: deque() for kind in _KINDS}
        self._all: list[Fault] = []

    def fail_next(
        self, *, kind: JobKind = "write", error: Exception, times: int | None = 1
    ) -> Failure:
        """Fail the next ``times`` jobs of ``kind`` (``None``: every one until ``clear()``)
        with ``error``, raised inside each job's transaction after the job ran (rolled back)."""
        _check_kind(kind)
        if not isinstance(error, Exception):
            raise TypeError(f"error must be an Exception instance, not {error!r}")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise TypeError(f"times must be a positive int or None, not {times!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        return self._arm(Failure(kind, error, times))

    def stall_next(self, *, kind: JobKind = "write") -> Stall:
        """Hold the next job of ``kind`` in its worker (transaction open) until released."""
        _check_kind(kind)
        return self._arm(Stall(kind, self._loop))

    def crash_next(self, *, kind: JobKind = "write", error: BaseException | None = None) -> Crash:
        """Kill the worker that takes the next job of ``kind``, before that job starts, by
        raising ``error`` (default: a ``RuntimeError``) in it.

        On PostgreSQL reads run in tasks of their own, not in a worker: only ``"write"``
        (the writer thread) can crash there.
        """
        _check_kind(kind)
        if kind == "read" and not self._read_workers:
            raise ValueError("this database runs each read in a task of its own: no worker")
        if error is None:
            error = RuntimeError(f"the {kind} worker crashed (injected by a test)")
        if not isinstance(error, BaseException):
            raise TypeError(f"error must be an exception instance, not {error!r}")
        return self._arm(Crash(kind, error))

    def clear(self) -> None:
        """Disarm every fault and release every stall."""
        for fault in self._all:
            fault.clear()
        for armed in self._armed.values():
            armed.clear()

    def take(self, kind: JobKind) -> Fault | None:
        """The fault the job being submitted takes, if any (loop thread only)."""
        armed = self._armed[kind]
        while armed:
            fault = armed[0]
            taken = fault._take()
            if fault._spent():
                armed.popleft()
            if taken:
                return fault
        return None

    def close(self) -> None:
        """The database closes: release every stall, fail every ``started()`` still waiting."""
        for fault in self._all:
            fault._close()
        for armed in self._armed.values():
            armed.clear()

    def _arm(self, fault: _F) -> _F:
        self._armed[fault.kind].append(fault)
        self._all.append(fault)
        return fault


def _check_kind(kind: object) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}, not {kind!r}")
