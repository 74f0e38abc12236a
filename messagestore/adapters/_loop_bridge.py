"""Call a store's coroutines from synchronous code and from other event loops.

A store belongs to the event loop it was opened on: its connections and tasks live there. An
SDK whose interface has blocking methods (LangChain's ``history.messages``, ``add_messages``,
``clear``) is called from threads of a web server (Flask, Django) that run no loop at all, while
the store's loop runs in a thread of its own. A ``LoopBridge`` knows the store's loop and runs a
coroutine on it:

* from a thread with no running loop, while the store's loop runs in another thread: the
  coroutine is scheduled there (``asyncio.run_coroutine_threadsafe``) and the calling thread
  blocks until it is done (or ``timeout`` seconds pass: ``TimeoutError``, and the coroutine is
  cancelled);
* from a thread with no running loop, while the store's loop is idle (a script that drives it
  with ``loop.run_until_complete``): it is run to completion on that loop;
* from inside the store's loop: a blocking call would stop the loop it waits for, so it raises
  ``RuntimeError`` naming the async method to await instead.

Async methods awaited in the store's loop run directly; awaited in another loop, they are
scheduled on the store's loop and awaited there without blocking the caller's loop. The store's
loop is the ``loop`` given, else the loop running where the bridge was created, else the first
loop an async method is awaited in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopBridge"]

T = TypeVar("T")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LoopBridge:
    """Runs coroutines on the store's event loop from wherever the caller is."""

    def __init__(
        self, owner: str, loop: asyncio.AbstractEventLoop | None, timeout: float | None
    ) -> None:
        self._owner = owner
        self._loop = loop if loop is not None else _running_loop()
        self._timeout = timeout

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The store's event loop, once known."""
        return self._loop

    async def run(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Await ``work()`` on the store's loop, from any running loop."""
        running = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = running
        if self._loop is running:
            return await work()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work(), self._loop))

    def run_blocking(
        self, work: Callable[[], Coroutine[Any, Any, T]], name: str, instead: str
    ) -> T:
        """Run ``work()`` on the store's loop and wait for it; ``name`` is the blocking method,
        ``instead`` the async method to await in the store's loop."""
        loop = self._loop
        running = _running_loop()
        if loop is None:
            raise RuntimeError(
                f"{self._owner}.{name}: the store's event loop is not known; create the "
                "history inside that loop, or pass loop=, or await "
                f"{self._owner}.{instead}() in it"
            )
        if running is loop:
            raise RuntimeError(
                f"{self._owner}.{name} blocks until the store's event loop has done the work, "
                f"and was called from inside that loop; use `await history.{instead}()` there"
            )
        if loop.is_closed():
            raise RuntimeError(f"{self._owner}.{name}: the store's event loop is closed")
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(work(), loop)
            try:
                return future.result(self._timeout)
            except TimeoutError:
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
