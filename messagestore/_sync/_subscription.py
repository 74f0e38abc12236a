"""``SyncSubscription``: a ``pubsub.Subscription`` read from an ordinary thread.

``for event in sub`` blocks for each next event and ends with the subscription; ``get(timeout)``
returns the next one, raises ``TimeoutError`` if none came in time and
``pubsub.SubscriptionEnded`` once there will be none. No event is lost to a timeout or an
interrupt: the next ``get()`` takes what the abandoned one received. ``close()`` is idempotent,
from any thread, and ends a waiting ``get()``. One consumer at a time. In full:
docs/MODULES.md.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
import weakref
from types import TracebackType
from typing import Any, Generic, TypeVar

from pubsub import Event, SubscriptionEnded, WouldBlock

from .. import FeedSubscription, Message, RevisionUnavailable, Session, StoreClosed
from ._loop import LoopThread

__all__ = ["SyncSubscription"]

T = TypeVar("T", Message, Session)


class SyncSubscription(Generic[T]):
    """One subscriber's stream of events, as a blocking iterator (see the module doc)."""

    def __init__(
        self, runner: LoopThread[Any], subscription: FeedSubscription[T], owner: object
    ) -> None:
        """Made on the store's loop thread by ``subscribe()``; ``owner`` is kept alive."""
        self._runner = runner
        self._subscription: FeedSubscription[T] = subscription
        self._owner = owner
        self._pending: concurrent.futures.Future[Event[T]] | None = None
        self._consumer = threading.Lock()
        self._leftover: collections.deque[Event[T]] = collections.deque()
        self._drained = False
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] = weakref.finalize(
            self, _close_quietly, subscription
        )
        self._finalizer.atexit = False

    # -- state -----------------------------------------------------------------------------------

    @property
    def buffer_size(self) -> int:
        """How many events the subscription buffers before publishers drop or wait."""
        return self._subscription.buffer_size

    @property
    def queued(self) -> int:
        """Events buffered and not yet received."""
        return self._subscription.queued + len(self._leftover)

    @property
    def waiting_senders(self) -> int:
        """Must-deliver publishers still waiting for room in this subscription's buffer."""
        return self._subscription.waiting_senders

    @property
    def revision(self) -> int | None:
        """The resume point (see ``FeedSubscription.revision``); events taken by ``get()``
        count once they were returned."""
        return self._subscription.revision

    @property
    def closed(self) -> bool:
        """True once the subscription accepts no more events (closed, or the store closed)."""
        return self._closed or self._subscription.closed

    # -- receiving -------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Event[T]:
        """The next event (``TimeoutError`` after ``timeout`` s; ``SubscriptionEnded`` at end)."""
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        if not self._consumer.acquire(blocking=False):
            raise RuntimeError(
                "another thread is already waiting in get() on this subscription; a "
                "subscription has exactly one consumer (subscribe again for another)"
            )
        try:
            return self._get(timeout)
        finally:
            self._consumer.release()

    def _get(self, timeout: float | None) -> Event[T]:
        if self._closed:
            raise SubscriptionEnded("the subscription is closed")
        future = self._pending
        if future is None:
            if self._drained:
                return self._take_leftover()
            try:
                future = self._runner.submit(self._subscription.receive)
            except StoreClosed:
                return self._after_store_closed()
            self._pending = future
        try:
            event = future.result(timeout)
        except (SubscriptionEnded, concurrent.futures.CancelledError):
            self._pending = None
            if self._closed or self._runner.is_open:
                raise SubscriptionEnded("the subscription is closed") from None
            return self._after_store_closed()
        except TimeoutError:
            if not future.done():
                # The wait timed out: the receive goes on; the next get() takes what it brings.
                raise TimeoutError(f"no event within {timeout} s") from None
            # The receive's own ``DatabaseTimeout``, raised as it is; it passes, so the next
            # get() receives again (another error of a receive stays: it is raised again).
            self._pending = None
            raise
        self._pending = None
        return event

    def _after_store_closed(self) -> Event[T]:
        """The store is closing: what it announced meanwhile is drained before its loop ends."""
        self._runner.wait_closed()
        return self._take_leftover()

    def _take_leftover(self) -> Event[T]:
        try:
            return self._leftover.popleft()
        except IndexError:
            raise SubscriptionEnded("the store is closed and every event was read") from None

    def drain(self) -> None:
        """Move what is still buffered out of the loop; called on the loop thread at close.

        A subscription that cannot resume (``RevisionUnavailable``) holds nothing to drain.
        """
        with contextlib.suppress(WouldBlock, SubscriptionEnded, RevisionUnavailable):
            while True:
                self._leftover.append(self._subscription.receive_nowait())
        self._drained = True

    def __iter__(self) -> SyncSubscription[T]:
        return self

    def __next__(self) -> Event[T]:
        try:
            return self.get()
        except SubscriptionEnded:
            raise StopIteration from None

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop receiving now; idempotent, from any thread."""
        self._closed = True
        self._leftover.clear()
        self._finalizer()

    def __enter__(self) -> SyncSubscription[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SyncSubscription {state} queued={self.queued}/{self.buffer_size}>"


def _close_quietly(subscription: FeedSubscription[Any]) -> None:
    # FeedSubscription.close() hands itself to the store's loop from other threads (the broker
    # and the feed must only be touched there); once the loop is gone the subscription is over
    # anyway.
    with contextlib.suppress(RuntimeError):
        subscription.close()
