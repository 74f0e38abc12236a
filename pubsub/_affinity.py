"""Which thread may touch a broker, and how other threads reach it.

A broker belongs to the thread that created it; its state is plain data changed only there, so
it needs no locks. It remembers the loop that last ran one of its async-facing calls. From
another thread ``publish``, ``shutdown`` and ``Subscription.close`` are handed to that loop
(``call_soon_threadsafe``, in order per calling thread); everything else raises
``RuntimeError``, and so does a hand-over when no owner loop is known or it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVarTuple

__all__ = ["ThreadAffinity"]

Ts = TypeVarTuple("Ts")


class ThreadAffinity:
    """The owner thread of one broker and the event loop last seen running there."""

    __slots__ = ("_loop", "thread_id")

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.remember_running_loop()

    @property
    def on_owner_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def remember_running_loop(self) -> None:
        """Note the loop running in the calling (owner) thread, if any."""
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def remember_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Note ``loop``, known to be running in the owner thread."""
        self._loop = loop

    def require_owner(self, what: str) -> None:
        """Raise ``RuntimeError`` unless called on the owner thread."""
        if threading.get_ident() != self.thread_id:
            raise RuntimeError(
                f"{what} was called from thread {threading.get_ident()}, but this broker "
                f"belongs to thread {self.thread_id} (the one that created it); call it there, "
                "or hand it over with loop.call_soon_threadsafe"
            )

    def hand_over(self, what: str, func: Callable[[*Ts], object], *args: *Ts) -> None:
        """Run ``func(*args)`` on the owner loop, soon; raise ``RuntimeError`` if impossible."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(
                f"{what} was called from thread {threading.get_ident()}, but the broker's owner "
                f"thread {self.thread_id} has not run it inside an event loop yet, so there is "
                "no loop to hand the call to"
            )
        try:
            loop.call_soon_threadsafe(func, *args)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{what} was called from thread {threading.get_ident()}, but the broker's "
                f"event loop is closed: {exc}"
            ) from exc
