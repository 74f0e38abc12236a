"""Long-lived responses: the registry that ends them on shutdown, and the receive loop.

Every streaming route registers its feed subscription with the app's :class:`StreamHub`;
``drain()`` (Ctrl-C, SIGTERM) closes them all so responses finish before the store closes, and
refuses new streams with 503. :func:`next_event` waits at most the keep-alive interval (``None``:
send a keep-alive) and loses nothing to the timeout. Memory per stream is bounded by the
subscription's buffer and one batch of frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pubsub import Event

from .. import FeedSubscription
from ._errors import ApiError

__all__ = ["RETRY_AFTER", "StreamHub", "next_event"]

RETRY_AFTER = 5
"""Seconds a client refused for want of room is asked to wait (``Retry-After``)."""


class StreamHub:
    """The open streams of one app, at most ``max_streams`` (None: no limit)."""

    def __init__(self, max_streams: int | None = None) -> None:
        self._open: set[FeedSubscription[Any]] = set()
        self.max_streams = max_streams
        self.draining = False

    def admit(self) -> None:
        """Raise ``ApiError(503)`` unless one more stream may open now (call it right before
        subscribing, with no await in between, then :meth:`add` the subscription)."""
        if self.draining:
            raise ApiError(503, "the server is shutting down")
        if self.max_streams is not None and len(self._open) >= self.max_streams:
            raise ApiError(
                503,
                f"the server serves as many streams as it takes ({self.max_streams:,}); "
                "retry later",
                headers={"retry-after": str(RETRY_AFTER)},
            )

    def add(self, subscription: FeedSubscription[Any]) -> None:
        self._open.add(subscription)

    def discard(self, subscription: FeedSubscription[Any]) -> None:
        self._open.discard(subscription)

    @property
    def open_streams(self) -> int:
        """Streams being served now."""
        return len(self._open)

    @property
    def subscriptions(self) -> tuple[FeedSubscription[Any], ...]:
        """The feed subscriptions of the streams being served now (their ``repr`` tells
        where each stands: for a report of a stream that does not move on)."""
        return tuple(self._open)

    def drain(self) -> None:
        """End every open stream and refuse new ones. Idempotent."""
        self.draining = True
        for subscription in list(self._open):
            subscription.close()
        self._open.clear()


async def next_event(subscription: FeedSubscription[Any], wait: float) -> Event[Any] | None:
    """The next event, or None after ``wait`` seconds without one.

    Raises ``SubscriptionEnded`` once the subscription is closed (the stream is over) and
    ``RevisionCompacted`` when its resume point is no longer retained.
    """
    try:
        async with asyncio.timeout(wait):
            return await subscription.receive()
    except TimeoutError:
        return None
