"""The in-process asyncio event broker: fan one publisher's events out to many subscribers.

Two publishing paths, and why:

* ``publish(type, payload)`` — **lossy**, for intermediate states (a streamed token). A plain
  synchronous method: it never blocks and never awaits, so a producer streaming thousands of
  deltas per second is never slowed by a slow UI. A subscriber whose buffer is full loses that
  event (for itself only); ``drop_count`` counts it and ``pubsub.dropped`` fires.
* ``await publish_must_deliver(type, payload)`` — **bounded**, for terminal states (a message
  finished). It first puts the event into every subscriber that has room, without waiting; then
  it waits for the full ones *concurrently*, so the publisher is blocked at most one
  ``must_deliver_timeout`` in total however many subscribers are stuck (the Go original waits
  N x timeout and holds its lock meanwhile). A subscriber still full at the deadline loses the
  event; ``must_deliver_drop_count`` counts it. Cancelling the publisher while it waits removes
  its pending sends from every buffer's waiting line: each subscriber either has the whole event
  or never will, and the ones that never will are counted as must-deliver drops.

Ordering: per subscriber, events arrive in publish order. A must-deliver event waiting for room
keeps its place: later lossy events for that subscriber cannot overtake it — the buffer stays
full while anyone waits, so they are dropped (or conflated into an older slot of a *different*
key), and later must-deliver events queue behind it.

Conflation (optional ``key=`` function of the payload): when a subscriber's buffer is full, a
lossy ``UPDATED`` event whose key equals that of a lossy ``UPDATED`` already queued for it
replaces that queued event *in place* (same position) instead of being dropped, and
``stats().conflated`` counts it. The lookup is O(1) (a per-subscriber ``key -> slot`` dict), so
it is cheap even at one publish per streamed token. The rule, so that one key's events never
reorder:

* only a lossy ``UPDATED`` replaces, and only a lossy ``UPDATED`` is replaced: ``CREATED``,
  ``DELETED`` and every must-deliver event are never overwritten;
* queuing any other event of key ``k`` (in the buffer or as a waiting must-deliver send) seals
  ``k``'s older slot, so a newer ``UPDATED`` of ``k`` can never jump ahead of it;
* across different keys, a replacing event is seen at the position of the one it replaced;
* a lossy ``UPDATED`` of a key with nothing replaceable queued is held as that key's newest
  state (one per key, bounded at ``max(16 x buffer_size, 1024)`` keys) and enters the buffer
  when the subscriber frees room, after any waiting must-deliver events; a later must-deliver
  event of the key supersedes it (counted as conflated).

So a slow subscriber always ends on the newest state of every key instead of staying stale until
the key's next event. Without a key function every full-buffer lossy event is simply dropped.

No lock is held across an await. ``subscribe()``, ``Subscription.close()`` and ``shutdown()``
are synchronous and return at once, even while a must-deliver publish is waiting. Closing a
subscription, or shutting down, wakes the must-deliver publishers waiting for it; those events
are not drops (the subscriber is gone). After ``shutdown()`` subscriptions drain what they had
buffered and then end; ``publish`` and ``publish_must_deliver`` reach nobody; ``subscribe()``
returns an already-ended subscription.

Threads: a broker belongs to the thread that created it (normally the event loop's). Calling
``publish()`` from another thread is supported: the call is handed to the owner loop with
``loop.call_soon_threadsafe`` and returns at once; events from one thread keep their order and
the counters change when the loop runs the hand-over. ``shutdown()`` and ``Subscription.close()``
are handed over the same way. ``subscribe()``, ``publish_must_deliver()`` and ``receive()``
from another thread raise ``RuntimeError``, and so does a hand-over when the owner loop is
closed or was never seen. State is only ever changed on the owner thread.

Cost: ``publish`` allocates the ``Event`` and nothing else per subscriber; each subscriber's
buffer is a preallocated ring of ``buffer_size`` slots (default 64 — a few UI frames of
streamed tokens; memory is one pointer per slot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from threading import get_ident
from typing import Final, Generic, TypeVar

from pubsub._affinity import ThreadAffinity
from pubsub._event import Event, EventType, as_event_type
from pubsub._inbox import CONFLATED, DROPPED, FULL, NO_KEY, Inbox, PendingSend
from pubsub._signals import DropPath, announce_drops
from pubsub._stats import BrokerStats
from pubsub._subscription import Subscription
from pubsub._validation import positive_int, positive_seconds

__all__ = ["DEFAULT_BUFFER_SIZE", "DEFAULT_MUST_DELIVER_TIMEOUT", "Broker"]

T = TypeVar("T")

DEFAULT_BUFFER_SIZE: Final = 64
"""Events a subscription buffers by default before lossy publishes drop."""
DEFAULT_MUST_DELIVER_TIMEOUT: Final = 0.05
"""Seconds ``publish_must_deliver`` waits, in total, for full subscribers."""


class Broker(Generic[T]):
    """Fan events of payload type ``T`` out to subscriptions.

    ``buffer_size`` (default 64) is each new subscription's default buffer;
    ``must_deliver_timeout`` (seconds, default 0.05) bounds one ``publish_must_deliver`` call in
    total; ``key`` (optional, a function of the payload) enables conflation of lossy
    ``UPDATED`` events per key. Non-positive sizes or timeouts raise ``ValueError``.

    In short (details in the ``pubsub._broker`` module docstring):

    * ``publish`` never waits; a full subscriber drops the event, counted in ``drop_count``.
    * ``publish_must_deliver`` waits for all full subscribers concurrently, at most one timeout
      in total; leftovers are counted in ``must_deliver_drop_count``.
    * Per subscriber, events keep publish order; conflation replaces a queued lossy
      ``UPDATED`` of the same key in place and never touches ``CREATED``/``DELETED`` or a
      must-deliver event.
    * Telemetry: ``stats()`` returns a frozen ``BrokerStats``; the ``pubsub.dropped`` blinker
      signal fires per drop with ``sender=broker``, ``event=`` and
      ``path="lossy" | "must_deliver"``.
    * Threads: the broker belongs to the thread that created it. ``publish`` (and ``shutdown``,
      ``Subscription.close``) from another thread is handed to the owner loop with
      ``call_soon_threadsafe``; ``subscribe``, ``publish_must_deliver`` and ``receive`` from
      another thread raise ``RuntimeError``.
    """

    __slots__ = (
        "__weakref__",
        "_affinity",
        "_buffer_size",
        "_conflated",
        "_delivered",
        "_dropped",
        "_inboxes",
        "_key",
        "_must_deliver_dropped",
        "_must_deliver_timeout",
        "_owner_thread",
        "_published",
        "_shut_down",
    )

    def __init__(
        self,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        must_deliver_timeout: float = DEFAULT_MUST_DELIVER_TIMEOUT,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable of the payload or None, got {key!r}")
        self._buffer_size = positive_int("buffer_size", buffer_size)
        self._must_deliver_timeout = positive_seconds("must_deliver_timeout", must_deliver_timeout)
        self._key = key
        self._affinity = ThreadAffinity()
        self._owner_thread = self._affinity.thread_id  # copied for the hot path
        self._inboxes: tuple[Inbox[T], ...] = ()
        self._shut_down = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._must_deliver_dropped = 0
        self._conflated = 0

    # ----------------------------------------------------------------- settings and counters

    @property
    def buffer_size(self) -> int:
        """Default buffer size of new subscriptions."""
        return self._buffer_size

    @property
    def must_deliver_timeout(self) -> float:
        """Seconds ``publish_must_deliver`` may wait in total; settable, must be > 0."""
        return self._must_deliver_timeout

    @must_deliver_timeout.setter
    def must_deliver_timeout(self, seconds: float) -> None:
        self._must_deliver_timeout = positive_seconds("must_deliver_timeout", seconds)

    @property
    def drop_count(self) -> int:
        """Events lost by lossy ``publish`` to a full subscriber."""
        return self._dropped

    @property
    def must_deliver_drop_count(self) -> int:
        """Events lost by ``publish_must_deliver`` after its bounded wait."""
        return self._must_deliver_dropped

    @property
    def subscriber_count(self) -> int:
        return len(self._inboxes)

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def stats(self) -> BrokerStats:
        """A frozen snapshot of the counters (see ``BrokerStats`` for their meaning)."""
        return BrokerStats(
            subscribers=len(self._inboxes),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            must_deliver_dropped=self._must_deliver_dropped,
            conflated=self._conflated,
        )

    # ----------------------------------------------------------------- subscribing

    def subscribe(self, *, buffer_size: int | None = None) -> Subscription[T]:
        """Register a new subscription; ``buffer_size=None`` means the broker's default."""
        self._affinity.require_owner("Broker.subscribe()")
        self._affinity.remember_running_loop()
        size = (
            self._buffer_size if buffer_size is None else positive_int("buffer_size", buffer_size)
        )
        inbox: Inbox[T] = Inbox(
            size, conflating=self._key is not None, on_superseded=self._count_superseded
        )
        if self._shut_down:
            inbox.end()
        else:
            self._inboxes = (*self._inboxes, inbox)
        return Subscription(inbox, self._affinity, self._release)

    def _release(self, inbox: Inbox[T]) -> None:
        """Close ``inbox`` for its subscription (explicit close or garbage collection)."""
        if self._affinity.on_owner_thread:
            self._close_inbox(inbox)
            return
        try:
            self._affinity.hand_over("Subscription finalizer", self._close_inbox, inbox)
        except RuntimeError:
            self._close_inbox(inbox)  # the owner loop is gone: nothing else runs broker code

    def _close_inbox(self, inbox: Inbox[T]) -> None:
        # Rebuilding the tuple (never mutating it) keeps a fan-out loop that is iterating the
        # old tuple safe even if this runs inside it, e.g. from a garbage-collection finalizer.
        self._inboxes = tuple(other for other in self._inboxes if other is not inbox)
        inbox.close()

    # ----------------------------------------------------------------- lossy path

    def publish(self, event_type: EventType, payload: T) -> None:
        """Offer the event to every subscriber without waiting; full ones drop it (counted).

        Synchronous; never blocks. Called from a thread other than the broker's, the call is
        handed to the broker's event loop (``call_soon_threadsafe``) and takes effect there,
        in order per calling thread; ``RuntimeError`` if that loop is closed or unknown.
        """
        # The hot path: kept flat on purpose (no helper calls, no allocation but the Event).
        if get_ident() != self._owner_thread:
            self._affinity.hand_over("Broker.publish()", self.publish, event_type, payload)
            return
        if event_type.__class__ is not EventType:
            event_type = as_event_type(event_type)
        key = NO_KEY if self._key is None else self._key(payload)
        event = Event(event_type, payload)
        self._published += 1
        replaceable = key is not NO_KEY and event_type is EventType.UPDATED
        inboxes = self._inboxes
        delivered = len(inboxes)
        dropped = 0
        for inbox in inboxes:
            outcome = inbox.offer(event, key, replaceable)
            if outcome:
                delivered -= 1
                if outcome == DROPPED:
                    dropped += 1
                elif outcome == CONFLATED:
                    self._conflated += 1
        self._delivered += delivered
        if dropped:
            self._count_drops(event, "lossy", dropped)

    def _new_event(self, event_type: EventType, payload: T) -> tuple[Event[T], Hashable]:
        """Validate, compute the conflation key (before any state changes), count."""
        key = NO_KEY if self._key is None else self._key(payload)
        event = Event(as_event_type(event_type), payload)
        self._published += 1
        return event, key

    def _count_superseded(self) -> None:
        """A held newest state gave way to a newer must-deliver event of its key."""
        self._conflated += 1

    def _count_drops(self, event: Event[T], path: DropPath, count: int) -> None:
        if path == "lossy":
            self._dropped += count
        else:
            self._must_deliver_dropped += count
        announce_drops(self, event, path, count)

    # ----------------------------------------------------------------- must-deliver path

    async def publish_must_deliver(self, event_type: EventType, payload: T) -> None:
        """Deliver to every subscriber, waiting at most ``must_deliver_timeout`` in total.

        Subscribers with room get the event at once; the full ones are waited for together.
        Each still full at the deadline (or when this call is cancelled) loses the event,
        counted in ``must_deliver_drop_count``. A subscriber that closes meanwhile (or a
        shutdown) ends the wait for it without a drop. Same as awaiting
        ``enqueue_must_deliver``, whose enqueueing happens when this coroutine starts.
        """
        self._affinity.require_owner("Broker.publish_must_deliver()")
        await self.enqueue_must_deliver(event_type, payload)

    def enqueue_must_deliver(self, event_type: EventType, payload: T) -> asyncio.Future[None]:
        """Enqueue a must-deliver event now; return the future to await for its delivery.

        The event takes its place in every subscriber's order *when this method is called*,
        before the caller yields: subscribers with room get it at once, the full ones get it
        queued in their waiting line. The returned future completes when every full subscriber
        has taken it, or at the deadline; each still full then loses the event, counted in
        ``must_deliver_drop_count``. Cancelling the future (or the task awaiting it) withdraws
        the event from the subscribers that have not taken it, counted the same way. A
        subscriber that closes meanwhile (or a shutdown) ends the wait for it without a drop.

        Doing the enqueueing eagerly lets a caller publish several events and then wait for all
        of them together (``asyncio.gather``) with their order fixed, and no task is needed.
        """
        self._affinity.require_owner("Broker.enqueue_must_deliver()")
        loop = asyncio.get_running_loop()
        self._affinity.remember_loop(loop)
        event, key = self._new_event(event_type, payload)
        full = self._put_where_room(event, key)
        done: asyncio.Future[None] = loop.create_future()
        if not full:
            done.set_result(None)
            return done
        send = PendingSend(event, key, len(full))
        for inbox in full:
            inbox.wait_in_line(send)
        deadline = loop.call_later(self._must_deliver_timeout, _complete, done)
        send.settled.add_done_callback(lambda _: _complete(done))

        def settle(_: asyncio.Future[None]) -> None:
            deadline.cancel()
            self._settle(send, full)

        done.add_done_callback(settle)
        return done

    def _put_where_room(self, event: Event[T], key: Hashable) -> list[Inbox[T]]:
        """Put into every inbox with room now; return the full ones."""
        full: list[Inbox[T]] = []
        delivered = 0
        for inbox in self._inboxes:
            outcome = inbox.try_put(event, key)
            if outcome == FULL:
                full.append(inbox)
            elif not outcome:
                delivered += 1
        self._delivered += delivered
        return full

    def _settle(self, send: PendingSend[T], full: list[Inbox[T]]) -> None:
        """After the wait (or its cancellation): withdraw from inboxes that never took it."""
        missed = sum(inbox.withdraw(send) for inbox in full)
        self._delivered += send.accepted
        if missed:
            self._count_drops(send.event, "must_deliver", missed)

    # ----------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """End every subscription (after it drains its buffer); idempotent; returns at once."""
        if not self._affinity.on_owner_thread:
            self._affinity.hand_over("Broker.shutdown()", self.shutdown)
            return
        if self._shut_down:
            return
        self._shut_down = True
        inboxes, self._inboxes = self._inboxes, ()
        for inbox in inboxes:
            inbox.end()

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "open"
        return (
            f"<Broker {state} subscribers={len(self._inboxes)} "
            f"buffer_size={self._buffer_size} must_deliver_timeout={self._must_deliver_timeout}>"
        )


def _complete(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
