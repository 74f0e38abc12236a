"""``pubsub``: a generic, in-process asyncio event broker.

One ``Broker[T]`` fans ``Event[T]`` objects (an ``EventType`` plus a payload) out to any number
of ``Subscription`` async iterators::

    broker = Broker[Message](buffer_size=64, key=lambda m: m.id, topic=lambda m: m.session_id)
    async with broker.subscribe(topic=session_id) as sub:       # topic=None: every event
        async for event in sub:
            ...
    broker.publish(EventType.UPDATED, msg)                      # lossy, never waits
    await broker.publish_must_deliver(EventType.UPDATED, msg)   # queued now, bounded wait

The contract: ``pubsub._broker`` and docs/MODULES.md. This package does not depend on
``messagestore``.
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
