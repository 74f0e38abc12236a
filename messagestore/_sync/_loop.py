"""One asyncio event loop in one thread, owning one resource from its opening to its closing.

``LoopThread(open, close)`` runs ``open()`` on a daemon thread's loop and keeps the result until
``close()``; ``call(func, *args)`` runs a coroutine there from any other thread and blocks for
its result (its own exception type; ``RuntimeError`` from the loop's own thread). A caller that
stops waiting cancels the coroutine; after ``close()`` calls raise ``StoreClosed``; every
submitted call resolves. An ``atexit`` hook closes loops left open; in a forked child calls
raise ``RuntimeError``. In full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import enum
import itertools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

from .. import StoreClosed

__all__ = ["EXIT_TIMEOUT", "LoopThread"]

EXIT_TIMEOUT = 10.0
"""Seconds the exit hook waits for each loop thread that was not closed."""

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger("messagestore")
_names = itertools.count(1)


class _State(enum.Enum):
    STARTING = "starting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class LoopThread(Generic[R]):
    """A daemon thread running an event loop that owns one resource (see the module doc)."""

    def __init__(
        self,
        open: Callable[[], Awaitable[R]],
        close: Callable[[R], Awaitable[None]],
        *,
        name: str = "messagestore-loop",
        timeout: float | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        self._open = open
        self._close = close
        self._timeout = timeout
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._state = _State.STARTING
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()  # binds to the loop on first use, in the loop thread
        self._opened: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._close_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"{name}-{next(_names)}", daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> R:
        """Start the thread, wait until ``open()`` returned there, and return its result.

        If ``open()`` raises, the thread ends, is joined, and the exception is raised here.
        """
        _register(self)
        self._thread.start()
        try:
            resource = self._opened.result()
        except BaseException:
            # open() failed (the thread is ending on its own), or this thread was interrupted
            # while it ran: then the loop thread closes what it opened and ends by itself.
            self._request_stop()
            if self._opened.done():
                self._thread.join()
            raise
        return resource

    @property
    def thread(self) -> threading.Thread:
        """The loop thread (for inspection)."""
        return self._thread

    @property
    def is_open(self) -> bool:
        """True until ``close()`` was requested (and before the fork, in a forked child)."""
        return self._state is _State.OPEN and os.getpid() == self._pid

    def close(self) -> None:
        """Close the resource on the loop, stop the loop and join the thread. Idempotent."""
        if os.getpid() != self._pid:
            with self._lock:
                self._state = _State.CLOSED
            return
        self._refuse_loop_thread("close()")
        self._request_stop()
        self._thread.join()
        with self._lock:
            error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    def request_close(self) -> None:
        """Ask the loop thread to close and end, without waiting (safe from any thread)."""
        if os.getpid() == self._pid:
            self._request_stop()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the thread ended; False if ``timeout`` elapsed first."""
        self._refuse_loop_thread("waiting for the close")
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _request_stop(self) -> None:
        with self._lock:
            if self._state in (_State.STARTING, _State.OPEN):
                self._state = _State.CLOSING
                # The loop stays open until the thread ends, and the thread ends only after
                # this callback ran, so it is never lost.
                self._loop.call_soon_threadsafe(self._stop.set)

    # -- calls -----------------------------------------------------------------------------------

    def call(self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await func(*args, **kwargs)`` on the loop and return its result."""
        label = _name(func)
        return self.wait(self._submit(label, _invoke(func, *args, **kwargs)), label)

    def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the plain function ``func(*args, **kwargs)`` on the loop thread."""
        label = _name(func)
        return self.wait(self._submit(label, _plain(func, *args, **kwargs)), label)

    def submit(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Queue ``func(*args, **kwargs)`` on the loop; ``StoreClosed`` once closing began."""
        return self._submit(_name(func), _invoke(func, *args, **kwargs))

    def _submit(
        self, label: str, coroutine: Coroutine[Any, Any, T]
    ) -> concurrent.futures.Future[T]:
        try:
            self._check_caller(label)
            with self._lock:
                if self._state is not _State.OPEN:
                    raise StoreClosed()
                return asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except BaseException:
            coroutine.close()  # never started: nothing ran on the loop
            raise

    def wait(self, future: concurrent.futures.Future[T], label: str) -> T:
        """Wait for a submitted call with the thread's ``timeout``; cancel it if we give up."""
        try:
            return future.result(self._timeout)
        except concurrent.futures.CancelledError:
            closed = StoreClosed()
            closed.add_note(f"the store closed while {label}() was running")
            raise closed from None
        except TimeoutError:
            if not future.cancel():
                return future.result()  # it finished meanwhile, or raised TimeoutError itself
            raise TimeoutError(
                f"{label}() did not finish within {self._timeout} s; it was cancelled"
            ) from None
        except BaseException:
            future.cancel()  # a no-op if the call had finished, as when it raised this
            raise

    def _check_caller(self, label: str) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"{label}() called in process {os.getpid()}, but this store was opened in "
                f"process {self._pid} and its event-loop thread did not survive the fork; "
                "open a new store in this process"
            )
        self._refuse_loop_thread(f"{label}()")

    def _refuse_loop_thread(self, what: str) -> None:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                f"{what} was called on the store's own event-loop thread (from a signal "
                "receiver or other code the loop runs); it would wait for itself forever. "
                "Use the asyncio store there, or hand the work to another thread"
            )

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: self._loop) as runner:
                runner.run(self._main())
            # Leaving the Runner cancelled what was still running (calls submitted just before
            # the stop), then shut down async generators and the default executor.
        except BaseException as exc:  # pragma: no cover - a bug in the loop machinery
            _log.exception("the store's event-loop thread failed")
            if not self._opened.done():
                self._opened.set_exception(exc)
        finally:
            with self._lock:
                self._state = _State.CLOSED
            _unregister(self)

    async def _main(self) -> None:
        try:
            resource = await self._open()
        except BaseException as exc:
            with self._lock:
                self._state = _State.CLOSING  # nothing to close; start() must not request it
            self._opened.set_exception(exc)
            return
        with self._lock:
            if self._state is _State.STARTING:
                self._state = _State.OPEN
        self._opened.set_result(resource)
        await self._stop.wait()
        try:
            await self._close(resource)
        except BaseException as exc:
            with self._lock:
                self._close_error = exc

    def __repr__(self) -> str:
        return f"<LoopThread {self._thread.name} {self._state.value}>"


async def _invoke(func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    # The call's own awaitable is created here, on the loop thread.
    return await func(*args, **kwargs)


async def _plain(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return func(*args, **kwargs)


def _name(func: Callable[..., object]) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or func)


# -- the exit hook -------------------------------------------------------------------------------

_open_threads: set[LoopThread[Any]] = set()
_registry_lock = threading.Lock()
_hook_registered = False


def _register(thread: LoopThread[Any]) -> None:
    global _hook_registered
    with _registry_lock:
        _open_threads.add(thread)
        if not _hook_registered:
            atexit.register(_close_at_exit)
            _hook_registered = True


def _unregister(thread: LoopThread[Any]) -> None:
    with _registry_lock:
        _open_threads.discard(thread)


def _close_at_exit() -> None:
    """Close every loop thread still open in this process, each within ``EXIT_TIMEOUT``."""
    with _registry_lock:
        threads = [t for t in _open_threads if t._pid == os.getpid()]
    for thread in threads:
        thread.request_close()
    for thread in threads:
        thread._thread.join(EXIT_TIMEOUT)
        if thread._thread.is_alive():
            _log.warning("%r did not close within %s s at exit; giving up", thread, EXIT_TIMEOUT)
        elif thread._close_error is not None:
            _log.error("closing %r at exit failed: %r", thread, thread._close_error)
