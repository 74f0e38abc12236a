"""``pubsub``: a generic, in-process asyncio event broker.

One ``Broker[T]`` fans ``Event[T]`` objects — an ``EventType`` (``CREATED``, ``UPDATED``,
``DELETED``) plus a payload — out to any number of ``Subscription`` async iterators::

    broker = Broker[Message](buffer_size=64, must_deliver_timeout=0.05,
                             key=lambda m: m.id, topic=lambda m: m.session_id)
    async with broker.subscribe(topic=session_id) as sub:       # topic=None: every event
        async for event in sub:
            ...
    broker.publish(EventType.UPDATED, msg)                      # lossy, never waits
    await broker.publish_must_deliver(EventType.UPDATED, msg)   # queued now, bounded wait
    broker.shutdown()

Contracts (the full text is in ``pubsub._broker``; details in the private modules):

* Order: each subscription receives a subsequence of the publish sequence, in publish order.
* Conflation (with ``key``): a full subscription removes its key's queued replaceable entry
  (a lossy ``UPDATED``, or a must-deliver one whose wait ended) and appends the newer event at
  the end; ``CREATED``/``DELETED`` and must-deliver events still waited for are never removed.
  ``conflate`` (optional) decides what the newer event carries then, e.g. its ``delta``
  merged with the removed one's (an event's ``delta`` is opaque to the broker).
* Capacity: ``buffer_size`` admitted entries, then an ordered overflow of at most
  ``Subscription.overflow_limit`` entries holding each key's newest state and must-deliver
  events waiting for admission.
* ``publish`` never blocks; an event that finds no place is dropped for that subscriber,
  counted in ``drop_count`` and ``Subscription.lost``.
* ``publish_must_deliver`` queues the event everywhere at once, then waits at most one
  ``must_deliver_timeout`` in total for it to be admitted in the full subscriptions. Late ones
  count in ``must_deliver_drop_count`` but keep the event as the newest state of its key;
  cancelling the publisher never withdraws the event.
* Topics (with ``topic``): ``subscribe(topic=value)`` receives only that topic's events, at a
  fan-out cost of O(subscribers of the topic + wildcard subscribers).
* ``stats()`` returns a frozen ``BrokerStats``; the ``dropped`` blinker signal fires on each
  counted drop with ``sender=broker, event=..., path="lossy" | "must_deliver"``.
* A broker belongs to the thread that created it; ``publish`` from other threads is handed to
  its loop, other cross-thread calls raise ``RuntimeError``.

This package does not depend on ``messagestore``.
"""

from __future__ import annotations

from pubsub._broker import DEFAULT_BUFFER_SIZE, DEFAULT_MUST_DELIVER_TIMEOUT, Broker
from pubsub._errors import PubSubError, SubscriptionEnded, WouldBlock
from pubsub._event import Event, EventType
from pubsub._signals import DropPath, dropped
from pubsub._stats import BrokerStats
from pubsub._subscription import Subscription

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MUST_DELIVER_TIMEOUT",
    "Broker",
    "BrokerStats",
    "DropPath",
    "Event",
    "EventType",
    "PubSubError",
    "Subscription",
    "SubscriptionEnded",
    "WouldBlock",
    "dropped",
]
