"""The consumer's handle on a broker: an async iterator of ``Event[T]``.

Contract:

* ``async for event in sub`` yields events in the order they entered this subscription's
  buffer, and ends cleanly (``StopAsyncIteration``) after ``sub.close()`` or
  ``broker.shutdown()``.
* ``close()`` is synchronous, idempotent and immediate: it discards what is still buffered
  (the consumer said it is done), releases any must-deliver publisher waiting for room here
  (not counted as a drop: the subscriber is gone) and unregisters from the broker.
* ``broker.shutdown()`` instead lets the consumer *drain* what was buffered before the shutdown,
  then ends the iteration: a late reader still sees the last states.
* ``async with broker.subscribe() as sub:`` closes on exit.
* ``receive()`` waits for the next event; ``receive_nowait()`` raises ``WouldBlock`` when none
  is buffered. Both raise ``SubscriptionEnded`` once the subscription is over. A subscription
  has one consumer: a second task waiting in ``receive()`` at the same time is a
  ``RuntimeError``.
* A subscription that is garbage-collected without ``close()`` is closed by its finalizer, so
  the broker does not keep feeding (or waiting for) a buffer nobody reads. The broker holds only
  the internal buffer, never the handle, which is what lets the handle be collected.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from pubsub._affinity import ThreadAffinity
from pubsub._errors import SubscriptionEnded
from pubsub._event import Event
from pubsub._inbox import Inbox

__all__ = ["Subscription"]

T = TypeVar("T")


class Subscription(Generic[T]):
    """One subscriber's stream of events. Create it with ``Broker.subscribe()``."""

    __slots__ = ("__weakref__", "_affinity", "_closer", "_inbox")

    def __init__(
        self,
        inbox: Inbox[T],
        affinity: ThreadAffinity,
        release: Callable[[Inbox[T]], None],
    ) -> None:
        self._inbox = inbox
        self._affinity = affinity
        self._closer = weakref.finalize(self, release, inbox)
        self._closer.atexit = False

    # ----------------------------------------------------------------- state

    @property
    def buffer_size(self) -> int:
        """How many events this subscription buffers before publishers drop or wait."""
        return self._inbox.capacity

    @property
    def queued(self) -> int:
        """Events buffered and not yet received."""
        return self._inbox.queued

    @property
    def waiting_senders(self) -> int:
        """``publish_must_deliver`` calls currently waiting for room in this buffer."""
        return self._inbox.waiting_senders

    @property
    def closed(self) -> bool:
        """True once the subscription accepts no more events (closed or broker shut down)."""
        return self._inbox.ended

    # ----------------------------------------------------------------- receiving

    async def receive(self) -> Event[T]:
        """Wait for the next event; raise ``SubscriptionEnded`` when there will be none."""
        self._affinity.require_owner("Subscription.receive()")
        self._affinity.remember_loop(asyncio.get_running_loop())
        return await self._inbox.take()

    def receive_nowait(self) -> Event[T]:
        """Return the next buffered event, or raise ``WouldBlock`` / ``SubscriptionEnded``."""
        self._affinity.require_owner("Subscription.receive_nowait()")
        return self._inbox.take_nowait()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> Event[T]:
        try:
            return await self.receive()
        except SubscriptionEnded:
            raise StopAsyncIteration from None

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop receiving now; idempotent. From a foreign thread it is handed to the loop."""
        if self._affinity.on_owner_thread:
            self._closer()
        else:
            self._affinity.hand_over("Subscription.close()", self._closer)

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<Subscription {state} queued={self.queued}/{self.buffer_size} "
            f"waiting_senders={self.waiting_senders}>"
        )
