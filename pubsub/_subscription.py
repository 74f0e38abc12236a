"""The consumer's handle on a broker: an async iterator of ``Event[T]``.

``async for event in sub`` yields a subsequence of the publish sequence in publish order and
ends after ``close()`` (immediate: discards what is queued) or ``broker.shutdown()`` (drains
first). ``queued`` counts admitted entries, ``pending`` adds the overflow, ``lost`` what it
will never receive. A cancelled ``receive()`` loses nothing; one consumer at a time. A handle
collected without ``close()`` is closed by its finalizer. In full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
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
        """How many entries this subscription admits before it overflows."""
        return self._inbox.capacity

    @property
    def overflow_limit(self) -> int:
        """The bound of the ordered overflow behind the admitted entries.

        ``max(16 * buffer_size, 1024)``. When the overflow is at this bound, an event that
        cannot supersede an entry of its key is dropped (and counted in ``lost``).
        """
        return self._inbox.overflow_limit

    @property
    def topic(self) -> Hashable:
        """The topic this subscription selects, or ``None`` for every event."""
        return self._inbox.topic

    @property
    def queued(self) -> int:
        """Admitted entries not yet received (at most ``buffer_size``; 0 iff ``pending`` is)."""
        return self._inbox.queued

    @property
    def pending(self) -> int:
        """Everything a draining consumer would still receive: admitted entries + overflow."""
        return self._inbox.pending

    @property
    def lost(self) -> int:
        """Events this subscription will never receive because they were dropped for it.

        Not counted: events superseded by a newer event of their key (conflation) and
        must-deliver events that were not admitted in time but stayed queued. Those leave the
        subscriber on the newest state; a lost event may not.
        """
        return self._inbox.lost

    @property
    def waiting_senders(self) -> int:
        """Must-deliver events queued here whose publishers still wait for their admission."""
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
        """Return the next queued event, or raise ``WouldBlock`` / ``SubscriptionEnded``."""
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
            f"pending={self.pending} lost={self.lost} waiting_senders={self.waiting_senders}>"
        )
