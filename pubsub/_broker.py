"""The in-process asyncio event broker: fan one publisher's events out to many subscribers.

``Broker.publish`` (lossy, never blocks) and ``publish_must_deliver`` (queued everywhere at
once, then a wait bounded by one ``must_deliver_timeout``) feed ``Subscription`` queues. Each
subscription receives a subsequence of the publish sequence in publish order; with ``key`` a
full subscription conflates a key's replaceable entry; every (event, subscription) pair ends in
exactly one counted outcome. State changes only in synchronous code on the owner thread; no
lock is held across an await. The full contract (order, conflation, capacity, must-deliver,
loss, topics, threads, cost): docs/MODULES.md; the broker's place in the store:
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from functools import partial
from threading import get_ident
from typing import Any, Final, Generic, TypeVar

from pubsub._affinity import ThreadAffinity
from pubsub._event import Event, EventType, as_event_type
from pubsub._inbox import CONFLATED, DELIVERED, DROPPED, NO_KEY, WAITING, Inbox
from pubsub._pending import PendingSend
from pubsub._routes import Routes
from pubsub._signals import DropPath, announce_drops
from pubsub._stats import BrokerStats
from pubsub._subscription import Subscription
from pubsub._validation import positive_int, positive_seconds

__all__ = ["DEFAULT_BUFFER_SIZE", "DEFAULT_MUST_DELIVER_TIMEOUT", "Broker"]

T = TypeVar("T")

DEFAULT_BUFFER_SIZE: Final = 64
"""Events a subscription admits by default before it overflows (or lossy publishes drop)."""
DEFAULT_MUST_DELIVER_TIMEOUT: Final = 0.05
"""Seconds ``publish_must_deliver`` waits, in total, for full subscribers."""


class Broker(Generic[T]):
    """Fan events of payload type ``T`` out to subscriptions.

    ``buffer_size`` (default 64) is each new subscription's default number of admitted
    entries; ``must_deliver_timeout`` (seconds, default 0.05) bounds one
    ``publish_must_deliver`` wait in total; ``key`` (optional, a function of the payload)
    enables conflation per key; ``topic`` (optional, a function of the payload) enables
    ``subscribe(topic=...)``. Non-positive sizes or timeouts raise ``ValueError``, a
    non-callable ``key`` or ``topic`` raises ``TypeError``.

    In short (the full contract is in docs/MODULES.md, ``pubsub._broker``):

    * Each subscription receives a subsequence of the publish sequence, in publish order.
    * ``publish`` never waits. A full subscription supersedes the queued replaceable entry of
      the event's key, or keeps a lossy ``UPDATED`` as its key's newest state in a bounded
      overflow; otherwise it drops the event, counted in ``drop_count`` and its ``lost``.
    * ``publish_must_deliver`` queues the event everywhere at once and waits for it to be
      admitted in the full subscriptions, concurrently, at most one timeout in total. Late
      subscriptions count a must-deliver drop but keep the event; cancelling the publisher
      never withdraws it.
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
        "_conflate",
        "_conflated",
        "_delivered",
        "_dropped",
        "_key",
        "_must_deliver_dropped",
        "_must_deliver_timeout",
        "_owner_thread",
        "_published",
        "_routes",
        "_shut_down",
        "_topic",
    )

    def __init__(
        self,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        must_deliver_timeout: float = DEFAULT_MUST_DELIVER_TIMEOUT,
        key: Callable[[T], Hashable] | None = None,
        topic: Callable[[T], Hashable] | None = None,
        conflate: Callable[[Event[T], Event[T]], Event[T]] | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable of the payload or None, got {key!r}")
        if topic is not None and not callable(topic):
            raise TypeError(f"topic must be a callable of the payload or None, got {topic!r}")
        self._buffer_size = positive_int("buffer_size", buffer_size)
        self._must_deliver_timeout = positive_seconds("must_deliver_timeout", must_deliver_timeout)
        if conflate is not None and not callable(conflate):
            raise TypeError(f"conflate must be a callable of two events or None, got {conflate!r}")
        self._key = key
        self._topic = topic
        self._conflate = conflate
        self._affinity = ThreadAffinity()
        self._owner_thread = self._affinity.thread_id  # copied for the hot path
        self._routes: Routes[T] = Routes()
        self._shut_down = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._must_deliver_dropped = 0
        self._conflated = 0

    # ----------------------------------------------------------------- settings and counters

    @property
    def buffer_size(self) -> int:
        """Default buffer size (admitted entries) of new subscriptions."""
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
        """(event, subscriber) pairs lost by lossy ``publish`` to a full subscription."""
        return self._dropped

    @property
    def must_deliver_drop_count(self) -> int:
        """(event, subscriber) pairs a must-deliver event was not admitted in time (or lost)."""
        return self._must_deliver_dropped

    @property
    def subscriber_count(self) -> int:
        return len(self._routes.everyone)

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def stats(self) -> BrokerStats:
        """A frozen snapshot of the counters (see ``BrokerStats`` for their meaning)."""
        return BrokerStats(
            subscribers=len(self._routes.everyone),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            must_deliver_dropped=self._must_deliver_dropped,
            conflated=self._conflated,
        )

    # ----------------------------------------------------------------- subscribing

    def subscribe(
        self, *, buffer_size: int | None = None, topic: Hashable = None
    ) -> Subscription[T]:
        """Register a new subscription.

        ``buffer_size=None`` means the broker's default. ``topic=None`` receives every event;
        any other value receives only events whose payload's topic (the broker's ``topic``
        function) equals it, and needs a broker made with ``topic=`` (else ``ValueError``).
        """
        self._affinity.require_owner("Broker.subscribe()")
        if topic is not None:
            if self._topic is None:
                raise ValueError(
                    f"subscribe(topic={topic!r}) needs a broker made with Broker(topic=...), "
                    "a function of the payload; this broker has none"
                )
            try:
                hash(topic)
            except TypeError:
                raise TypeError(
                    f"topic must be hashable (it is compared with the payload's topic), "
                    f"got {topic!r} ({type(topic).__name__})"
                ) from None
        self._affinity.remember_running_loop()
        size = (
            self._buffer_size if buffer_size is None else positive_int("buffer_size", buffer_size)
        )
        inbox: Inbox[T] = Inbox(size, topic=topic, conflate=self._conflate)
        if self._shut_down:
            inbox.end()
        else:
            self._routes.add(inbox)
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
        self._routes.remove(inbox)
        inbox.close()

    def _reached_by(self, payload: T) -> tuple[Inbox[T], ...]:
        """The inboxes an event with ``payload`` reaches (calls the topic function)."""
        routes = self._routes
        if self._topic is None:
            return routes.everyone
        return routes.fan_out.get(self._topic(payload), routes.wildcard)

    # ----------------------------------------------------------------- lossy path

    def publish(self, event_type: EventType, payload: T, delta: Any = None) -> None:
        """Offer the event to every subscriber it reaches, without waiting.

        Synchronous; never blocks. A full subscription supersedes, keeps it in its overflow,
        or drops it (counted), as its contract says. Called from a thread other than
        the broker's, the call is handed to the broker's event loop (``call_soon_threadsafe``)
        and takes effect there, in order per calling thread; ``RuntimeError`` if that loop is
        closed or unknown.
        """
        # The hot path: kept flat on purpose (no helper calls, no allocation but the Event).
        if get_ident() != self._owner_thread:
            self._affinity.hand_over("Broker.publish()", self.publish, event_type, payload, delta)
            return
        if event_type.__class__ is not EventType:
            event_type = as_event_type(event_type)
        key = NO_KEY if self._key is None else self._key(payload)
        if self._topic is None:
            inboxes = self._routes.everyone
        else:
            inboxes = self._routes.fan_out.get(self._topic(payload), self._routes.wildcard)
        event = Event(event_type, payload, delta)
        seq = self._published + 1
        self._published = seq
        replaceable = key is not NO_KEY and event_type is EventType.UPDATED
        delivered = len(inboxes)
        dropped = 0
        for inbox in inboxes:
            outcome = inbox.offer(event, seq, key, replaceable)
            if outcome:
                delivered -= 1
                if outcome == DROPPED:
                    dropped += 1
                elif outcome == CONFLATED:
                    self._conflated += 1
        self._delivered += delivered
        if dropped:
            self._count_drops(event, "lossy", dropped)

    def _count_drops(self, event: Event[T], path: DropPath, count: int) -> None:
        if path == "lossy":
            self._dropped += count
        else:
            self._must_deliver_dropped += count
        announce_drops(self, event, path, count)

    # ----------------------------------------------------------------- must-deliver path

    async def publish_must_deliver(
        self, event_type: EventType, payload: T, delta: Any = None
    ) -> None:
        """Queue the event in every subscriber now; wait at most ``must_deliver_timeout``.

        Same as awaiting ``enqueue_must_deliver``, whose queueing happens when this coroutine
        starts. Returns when the event is admitted in every subscription that had no room, or
        at the deadline (late subscriptions count a must-deliver drop and keep the event).
        Cancelling this call stops the waiting only; the event is never withdrawn.
        """
        self._affinity.require_owner("Broker.publish_must_deliver()")
        await self.enqueue_must_deliver(event_type, payload, delta)

    def enqueue_must_deliver(
        self, event_type: EventType, payload: T, delta: Any = None
    ) -> asyncio.Future[None]:
        """Queue a must-deliver event now; return the future to await for its admission.

        The event takes its place in every subscriber's order *when this method is called*,
        before the caller yields: admitted where there is room, appended to the overflow
        (after superseding its key's replaceable entry) where there is none. The returned
        future completes when it is admitted in every one of those, or at the deadline
        (``must_deliver_timeout``); each subscription where it is still not admitted then
        counts a must-deliver drop (``must_deliver_drop_count`` and the ``dropped`` signal)
        and keeps the event as its key's newest state. Cancelling the future (or the task
        awaiting it) ends the wait the same way; it never withdraws the event. A subscription
        that closes meanwhile (or a shutdown) ends the wait for it without a drop. Only a
        subscription whose overflow is at its bound loses the event for good (counted at once).

        Doing the queueing eagerly lets a caller publish several events and then wait for all
        of them together (``asyncio.gather``) with their order fixed, and no task is needed.
        """
        self._affinity.require_owner("Broker.enqueue_must_deliver()")
        loop = asyncio.get_running_loop()
        self._affinity.remember_loop(loop)
        event_type = as_event_type(event_type)
        key = NO_KEY if self._key is None else self._key(payload)
        inboxes = self._reached_by(payload)
        event = Event(event_type, payload, delta)
        seq = self._published + 1
        self._published = seq
        done: asyncio.Future[None] = loop.create_future()
        replaceable = key is not NO_KEY and event_type is EventType.UPDATED
        send = PendingSend(event, seq, key, replaceable=replaceable, done=done)
        lost = 0
        for inbox in inboxes:
            outcome = inbox.put_must_deliver(send)
            if outcome == DELIVERED:
                self._delivered += 1
            elif outcome == CONFLATED:
                self._conflated += 1
            elif outcome == WAITING:
                send.wait_in(inbox)
            elif outcome == DROPPED:
                lost += 1
        if send.inboxes:
            deadline = loop.call_later(self._must_deliver_timeout, _complete, done)
            done.add_done_callback(partial(self._settle, send, deadline))
        else:
            done.set_result(None)
        if lost:
            self._count_drops(event, "must_deliver", lost)
        return done

    def _settle(
        self, send: PendingSend[T], deadline: asyncio.TimerHandle, _: asyncio.Future[None]
    ) -> None:
        """After the wait (completed or cancelled): stop it where the event is not admitted."""
        deadline.cancel()
        late = sum(inbox.stop_waiting(send) for inbox in send.inboxes)
        self._delivered += send.delivered
        self._conflated += send.conflated
        if late:
            self._count_drops(send.event, "must_deliver", late)

    # ----------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """End every subscription (after it drains its queue); idempotent; returns at once."""
        if not self._affinity.on_owner_thread:
            self._affinity.hand_over("Broker.shutdown()", self.shutdown)
            return
        if self._shut_down:
            return
        self._shut_down = True
        for inbox in self._routes.clear():
            inbox.end()

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "open"
        return (
            f"<Broker {state} subscribers={len(self._routes.everyone)} "
            f"buffer_size={self._buffer_size} must_deliver_timeout={self._must_deliver_timeout}>"
        )


def _complete(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
