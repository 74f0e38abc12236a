"""Run an adapter's work on the store's event loop, wherever the adapter is called from.

A store belongs to the event loop it was opened on (``store.loop``): called from anywhere
else it raises ``WrongEventLoop``. An SDK calls its session or history from wherever its
user runs it: the OpenAI Agents SDK's ``Runner.run_sync`` in a loop of its own, a thread
pool's threads each with its own loop, LangChain's blocking ``history.messages`` from a Flask
or Django worker thread with no loop at all. A ``LoopBridge`` runs the adapter's work — a
coroutine that calls the store — on the store's loop and hands the result back:

* awaited in the store's loop: the work is awaited directly;
* awaited in another loop: it is scheduled on the store's loop
  (``asyncio.run_coroutine_threadsafe``) and awaited without blocking the caller's loop. The
  store's loop must be running (in its own thread) and not blocked: otherwise this raises
  ``WrongEventLoop`` at once instead of waiting forever. A caller cancelled meanwhile cancels
  the work; callers that must learn the outcome of a mutation wrap the whole call in
  ``_outcome.run_to_outcome`` first;
* called from a thread with no running loop (``run_blocking``): scheduled on the store's loop
  running in another thread, the calling thread blocking until it is done (or ``timeout``
  seconds pass: ``TimeoutError``, and the work is cancelled); if the store's loop is idle (a
  script that drives it with ``loop.run_until_complete``), the work runs to completion on it;
  from inside the store's loop a blocking call would stop the loop it waits for, so it raises
  ``RuntimeError`` naming the async method to await instead.

So every store call of an adapter, and every lock and cache it keeps per store
(``_adapter_state``), lives on the store's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import Store, StoreClosed, WrongEventLoop

__all__ = ["LoopBridge"]

T = TypeVar("T")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LoopBridge:
    """Runs coroutines on ``store.loop`` from wherever the caller is."""

    def __init__(self, owner: str, store: Store, timeout: float | None = None) -> None:
        if not isinstance(store, Store):
            raise TypeError(
                f"{owner} takes an asyncio store (messagestore.open_store), not "
                f"{type(store).__name__}"
            )
        self._owner = owner
        self._loop = store.loop
        self._timeout = timeout

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The store's event loop."""
        return self._loop

    @property
    def here(self) -> bool:
        """True when the caller runs in the store's loop."""
        return _running_loop() is self._loop

    async def run(self, work: Callable[[], Coroutine[Any, Any, T]], name: str = "") -> T:
        """Await ``work()`` on the store's loop, from any running loop."""
        loop = self._loop
        if asyncio.get_running_loop() is loop:
            return await work()
        self._check_reachable(name)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work(), loop))

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` on the store's loop: now if the caller is there, else soon."""
        if _running_loop() is self._loop:
            callback()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    def _check_reachable(self, name: str) -> None:
        """Refuse at once what would wait forever: a closed or stopped store loop."""
        call = f"{self._owner}.{name}()" if name else self._owner
        if self._loop.is_closed():
            raise StoreClosed(f"the store's event loop (used by {call})")
        if not self._loop.is_running():
            raise WrongEventLoop(
                call,
                "from another event loop while the store's event loop is not running (it runs "
                "the store's work: keep it running in a thread of its own while others call it)",
            )

    def run_blocking(
        self, work: Callable[[], Coroutine[Any, Any, T]], name: str, instead: str
    ) -> T:
        """Run ``work()`` on the store's loop and wait for it; ``name`` is the blocking method,
        ``instead`` the async method to await in the store's loop."""
        loop = self._loop
        running = _running_loop()
        if running is loop:
            raise RuntimeError(
                f"{self._owner}.{name} blocks until the store's event loop has done the work, "
                f"and was called from inside that loop; use `await history.{instead}()` there"
            )
        if loop.is_closed():
            raise StoreClosed(f"the store's event loop (used by {self._owner}.{name})")
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(work(), loop)
            try:
                return future.result(self._timeout)
            except TimeoutError:
                if future.done():  # the work's own error (``DatabaseTimeout``), not the wait's
                    raise
                future.cancel()
                raise TimeoutError(
                    f"{self._owner}.{name} did not finish within {self._timeout} s"
                ) from None
        if running is not None:
            raise RuntimeError(
                f"{self._owner}.{name}: the store's event loop is not running, and this thread "
                "runs another loop; start the store's loop, or await "
                f"history.{instead}() in it"
            )
        return loop.run_until_complete(work())
