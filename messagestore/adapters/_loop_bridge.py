"""Run an adapter's work on the store's event loop, wherever the adapter is called from.

A store answers only on its own loop; an SDK calls from wherever its user runs it. A
``LoopBridge`` runs the work there and hands the result back: awaited directly in the store's
loop; from another loop scheduled on the store's (running in its own thread) and awaited
without blocking, a cancelled caller cancelling the work; from a thread with no loop
(``run_blocking``) scheduled and waited for (``timeout``), or run on the store's loop when it is
idle; from inside the store's loop a blocking call raises ``RuntimeError``. A store loop that
is not running raises ``WrongEventLoop`` at once instead of waiting. In full: docs/MODULES.md.
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
