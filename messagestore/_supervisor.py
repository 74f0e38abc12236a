"""One owner of background loops: it starts them, notices one that dies, and stops them.

Every loop of a store, a dispatcher or a database's workers is started through its owner's
``Supervisor``. A loop that ends any way but being stopped is logged once and recorded;
``check()`` then raises ``BackgroundTaskFailed`` naming it wherever a write begins (for an
``essential`` loop). ``Loop.stop()`` asks a loop to end (``on_stop`` or a cancellation) with a
grace; ``stop()`` stops every loop, newest first. One death does not cancel the others. Which
loops each owner runs: docs/ARCHITECTURE.md, "Background work and who owns it".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ._errors import BackgroundTaskFailed

__all__ = ["Loop", "Supervisor"]

_log = logging.getLogger("messagestore")

_CANCELLED_BY_ANOTHER = (
    "was cancelled by something other than its owner (an event loop shut down with it open?)"
)

CoroutineFactory = Callable[[], Coroutine[Any, Any, object]]
OnDeath = Callable[[BackgroundTaskFailed], None]


class Loop:
    """A loop started by a ``Supervisor``; ``stop()`` it, or let its supervisor stop it."""

    __slots__ = (
        "_dead",
        "_injected",
        "_on_death",
        "_on_stop",
        "_stopping",
        "essential",
        "grace",
        "name",
        "task",
    )

    def __init__(
        self,
        name: str,
        *,
        essential: bool,
        on_stop: Callable[[], None] | None,
        grace: float | None,
        on_death: OnDeath | None,
    ) -> None:
        self.name = name
        self.essential = essential
        self.grace = grace
        self._on_stop = on_stop
        self._on_death = on_death
        self._stopping = False
        self._dead = False
        self._injected: BaseException | None = None
        self.task: asyncio.Task[None]

    @property
    def stopping(self) -> bool:
        """True once its owner asked it to stop: how it ends from then on is no failure."""
        return self._stopping

    def done(self) -> bool:
        """True once the loop has ended (stopped or died)."""
        return self.task.done()

    def request_stop(self) -> None:
        """Ask the loop to end, now (synchronously); idempotent.

        A loop started with ``on_stop`` is told through it and ends by itself (``stop()``
        cancels it after its grace); any other is cancelled.
        """
        if self._stopping:
            return
        self._stopping = True
        if self._on_stop is None:
            self.task.cancel()
            return
        try:
            self._on_stop()
        except Exception:
            _log.exception("messagestore: asking loop %r to stop raised; cancelling it", self.name)
            self.task.cancel()

    async def stop(self) -> None:
        """``request_stop()``, wait up to ``grace`` seconds (None: as long as it takes) for
        the loop to end by itself, then cancel it and wait until it has ended. Idempotent.

        A caller cancelled meanwhile only stops waiting: the loop was asked to stop (and is
        cancelled at once if the caller was waiting out its grace).
        """
        self.request_stop()
        task = self.task
        if not task.done() and self._on_stop is not None and self.grace != 0:
            try:
                await asyncio.wait([task], timeout=self.grace)
            finally:
                if not task.done():
                    task.cancel()
        elif not task.done():
            task.cancel()
        if not task.done():
            await asyncio.wait([task])

    def __repr__(self) -> str:
        state = "ended" if self.task.done() else "stopping" if self._stopping else "running"
        return f"Loop({self.name!r}, {state})"


class Supervisor:
    """Owns the background loops of one store, dispatcher or database (module docstring).

    ``owner`` names what owns the loops in logs and errors ("store", "dispatcher", ...).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._loops: list[Loop] = []  # running or stopping, in start order
        self._failure: BackgroundTaskFailed | None = None  # the first essential death
        self._failures: list[BackgroundTaskFailed] = []
        self._watchers: list[Supervisor] = []
        self._stopped = False

    # -- starting ----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        coroutine_factory: CoroutineFactory,
        *,
        essential: bool = True,
        on_stop: Callable[[], None] | None = None,
        grace: float | None = 0.0,
        on_death: OnDeath | None = None,
    ) -> Loop:
        """Start ``coroutine_factory()`` as a loop this supervisor owns; return its handle.

        The loop should run until it is stopped. ``essential``: its death makes ``check()``
        raise (writes are refused). ``on_stop``: how to ask it to end by itself (it then has
        ``grace`` seconds to finish what is in flight before it is cancelled); without it,
        stopping cancels it. ``on_death`` runs (on the loop's task, once) when it dies, after
        the death is logged and recorded: the owner fails whatever waited on the loop.
        """
        if self._stopped:
            raise RuntimeError(f"the {self.owner}'s loops are stopped: {name!r} is not started")
        loop = Loop(name, essential=essential, on_stop=on_stop, grace=grace, on_death=on_death)
        task = asyncio.get_running_loop().create_task(
            self._run(loop, coroutine_factory), name=f"messagestore-{name}"
        )
        loop.task = task
        self._loops.append(loop)
        task.add_done_callback(lambda _: self._ended(loop))
        return loop

    async def _run(self, loop: Loop, factory: CoroutineFactory) -> None:
        """The body of every loop's task: run the loop, and judge how it ended."""
        try:
            await factory()
        except asyncio.CancelledError as cancelled:
            if loop._stopping:
                raise
            if loop._injected is not None:  # a test's injected death (``messagestore.testing``)
                self._died(loop, loop._injected, "raised")
                return
            self._died(loop, cancelled, _CANCELLED_BY_ANOTHER)
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            self._died(loop, exc, "raised")
            raise
        except BaseException as exc:
            if loop._stopping:
                _log.warning("messagestore: loop %r raised while stopping: %r", loop.name, exc)
                return
            self._died(loop, exc, "raised")
        else:
            if not loop._stopping:
                self._died(loop, None, "returned although it should run until it is stopped")

    def _ended(self, loop: Loop) -> None:
        self._forget(loop)
        if loop._stopping and not loop._dead:
            _log.debug("messagestore: the %s's background loop %r stopped", self.owner, loop.name)
        elif loop.task.cancelled() and not loop._dead:
            # Cancelled before it ever ran: ``_run`` had no chance to judge it.
            if loop._injected is not None:
                self._died(loop, loop._injected, "raised")
            else:
                self._died(loop, asyncio.CancelledError(), _CANCELLED_BY_ANOTHER)

    def _died(self, loop: Loop, cause: BaseException | None, how: str) -> None:
        loop._dead = True
        error = BackgroundTaskFailed(loop.name, self.owner, how, cause)
        self._failures.append(error)
        # A cancellation by another is mostly an event loop shutting down with the owner
        # still open: worth a warning (what was buffered is lost), not an error report.
        level = logging.WARNING if how is _CANCELLED_BY_ANOTHER else logging.ERROR
        _log.log(
            level,
            "messagestore: the %s's background loop %r %s%s%s",
            self.owner,
            loop.name,
            how,
            "" if cause is None or isinstance(cause, asyncio.CancelledError) else f": {cause!r}",
            "; writes are refused from now on" if loop.essential else "",
            exc_info=None if isinstance(cause, asyncio.CancelledError) else cause,
        )
        if loop.essential:
            self._record(error)
        if loop._on_death is not None:
            try:
                loop._on_death(error)
            except Exception:
                _log.exception("messagestore: cleaning up after loop %r died raised", loop.name)

    def _record(self, error: BackgroundTaskFailed) -> None:
        if self._failure is None:
            self._failure = error
            for watcher in self._watchers:
                watcher._record(error)

    def _forget(self, loop: Loop) -> None:
        if loop in self._loops:
            self._loops.remove(loop)

    # -- watching ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``BackgroundTaskFailed`` if an essential loop (here, or of a supervisor
        this one ``watch``es) died; cheap: one attribute test while all is well."""
        if self._failure is not None:
            raise self._failure.again()

    @property
    def failure(self) -> BackgroundTaskFailed | None:
        """The first essential loop's death (what ``check()`` raises), or None."""
        return self._failure

    @property
    def failures(self) -> tuple[BackgroundTaskFailed, ...]:
        """Every death of a loop of this supervisor, essential or not, in order."""
        return tuple(self._failures)

    def watch(self, other: Supervisor) -> None:
        """Also fail ``check()`` when an essential loop of ``other`` dies (a store watches
        its database's workers)."""
        other._watchers.append(self)
        if other._failure is not None:
            self._record(other._failure)

    @property
    def loops(self) -> tuple[Loop, ...]:
        """The loops running or stopping now, in start order."""
        return tuple(self._loops)

    def find(self, name: str) -> Loop | None:
        """The newest running loop called ``name``."""
        for loop in reversed(self._loops):
            if loop.name == name and not loop.stopping and not loop.done():
                return loop
        return None

    async def inject(self, name: str, error: BaseException) -> None:
        """Make the running loop ``name`` die as if ``error`` escaped it (for tests, through
        ``messagestore.testing``); return once its death is recorded."""
        loop = self.find(name)
        if loop is None:
            running = ", ".join(repr(x.name) for x in self._loops if not x.stopping) or "none"
            raise LookupError(f"the {self.owner} runs no loop {name!r} (running: {running})")
        loop._injected = error
        loop.task.cancel()
        await asyncio.wait([loop.task])

    # -- stopping ----------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True once ``stop()`` was called: no loop starts any more."""
        return self._stopped

    async def stop(self) -> None:
        """Stop every loop still running, newest first (each with its grace), and wait until
        each has ended. Idempotent; no loop starts afterwards."""
        self._stopped = True
        for loop in list(reversed(self._loops)):
            await loop.stop()
            self._forget(loop)
