"""``pubsub``: a generic, in-process asyncio event broker.

One ``Broker[T]`` fans ``Event[T]`` objects — an ``EventType`` (``CREATED``, ``UPDATED``,
``DELETED``) plus a payload — out to any number of ``Subscription`` async iterators::

    broker = Broker[Message](buffer_size=64, must_deliver_timeout=0.05, key=lambda m: m.id)
    async with broker.subscribe() as sub:
        async for event in sub:
            ...
    broker.publish(EventType.UPDATED, msg)                      # lossy, never waits
    await broker.publish_must_deliver(EventType.UPDATED, msg)   # bounded wait, then dropped
    broker.shutdown()

Contracts (details in the private modules' docstrings):

* ``publish`` never blocks; a full subscriber loses the event, counted in ``drop_count``.
* ``publish_must_deliver`` waits at most one ``must_deliver_timeout`` in total for all full
  subscribers together; leftovers are counted in ``must_deliver_drop_count``.
* Per subscriber, events keep publish order; with a ``key`` function a full buffer conflates a
  newer lossy ``UPDATED`` into the queued one of the same key, in place.
* ``stats()`` returns a frozen ``BrokerStats``; the ``dropped`` blinker signal fires on each
  drop with ``sender=broker, event=..., path="lossy" | "must_deliver"``.
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
