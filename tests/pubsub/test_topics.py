"""Topics: ``Broker(topic=...)`` and ``subscribe(topic=...)`` select events by payload topic."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from pubsub import Broker, EventType, Subscription

Payload = tuple[str, int]  # (topic, n)


def topic_broker(**kwargs: Any) -> Broker[Payload]:
    return Broker(topic=lambda payload: payload[0], **kwargs)


def drain(sub: Subscription[Payload]) -> list[Payload]:
    payloads = []
    while sub.queued:
        payloads.append(sub.receive_nowait().payload)
    return payloads


def test_a_topic_subscriber_receives_only_its_topic_and_a_wildcard_everything() -> None:
    broker = topic_broker()
    red, blue, everything = (
        broker.subscribe(topic="red"),
        broker.subscribe(topic="blue"),
        broker.subscribe(),
    )
    assert (red.topic, blue.topic, everything.topic) == ("red", "blue", None)
    published = [("red", 1), ("blue", 2), ("green", 3), ("red", 4)]
    for payload in published:
        broker.publish(EventType.UPDATED, payload)
    assert drain(red) == [("red", 1), ("red", 4)]
    assert drain(blue) == [("blue", 2)]
    assert drain(everything) == published


def test_counters_count_only_the_pairs_an_event_reached() -> None:
    broker = topic_broker(buffer_size=1)
    subs = [broker.subscribe(topic=f"t{n}") for n in range(50)]
    wildcard = broker.subscribe(buffer_size=10)
    broker.publish(EventType.CREATED, ("t7", 1))
    broker.publish(EventType.CREATED, ("t7", 2))  # t7's buffer of 1 is full: one drop
    broker.publish(EventType.CREATED, ("nobody", 3))
    stats = broker.stats()
    assert (stats.published, stats.delivered, stats.dropped) == (3, 4, 1)
    assert stats.delivered + stats.conflated + stats.dropped + stats.must_deliver_dropped == 5
    assert subs[7].lost == 1
    assert sum(sub.pending for sub in subs) == 1
    assert drain(wildcard) == [("t7", 1), ("t7", 2), ("nobody", 3)]


async def test_must_deliver_waits_only_for_the_subscribers_of_its_topic() -> None:
    broker = topic_broker(must_deliver_timeout=10.0)
    stuck = broker.subscribe(topic="slow", buffer_size=1)
    broker.publish(EventType.UPDATED, ("slow", 0))
    ready = broker.subscribe(topic="fast")
    async with asyncio.timeout(1):  # a wait for the stuck subscriber would last 10 s
        await broker.publish_must_deliver(EventType.UPDATED, ("fast", 1))
    assert stuck.waiting_senders == 0
    assert drain(ready) == [("fast", 1)]
    assert drain(stuck) == [("slow", 0)]


def test_topics_and_keys_work_together() -> None:
    broker: Broker[tuple[str, str, int]] = Broker(
        buffer_size=1, key=lambda p: p[1], topic=lambda p: p[0]
    )
    sub = broker.subscribe(topic="session-1")
    for version in range(5):
        broker.publish(EventType.UPDATED, ("session-1", "message-a", version))
        broker.publish(EventType.UPDATED, ("session-2", "message-b", version))
    assert sub.receive_nowait().payload == ("session-1", "message-a", 4)
    assert sub.pending == 0
    assert broker.stats().conflated == 4


def test_subscribe_with_a_topic_needs_a_topic_function() -> None:
    broker: Broker[Payload] = Broker()
    with pytest.raises(ValueError, match=r"topic='red'.*Broker\(topic=\.\.\.\)"):
        broker.subscribe(topic="red")
    assert broker.subscriber_count == 0
    assert broker.subscribe(topic=None).topic is None


def test_a_subscription_topic_must_be_hashable() -> None:
    broker = topic_broker()
    with pytest.raises(TypeError, match=r"topic must be hashable.*\['red'\]"):
        broker.subscribe(topic=["red"])  # type: ignore[arg-type]
    assert broker.subscriber_count == 0


def test_the_topic_function_must_be_callable() -> None:
    with pytest.raises(TypeError, match="topic"):
        Broker[int](topic="session_id")  # type: ignore[arg-type]


def test_a_raising_topic_function_fails_the_publish_before_any_state_changes() -> None:
    def topic(payload: Payload) -> str:
        if payload[0] == "bad":
            raise LookupError("no topic for this payload")
        return payload[0]

    broker: Broker[Payload] = Broker(topic=topic)
    sub = broker.subscribe()
    with pytest.raises(LookupError, match="no topic"):
        broker.publish(EventType.UPDATED, ("bad", 1))
    assert (broker.stats().published, sub.pending) == (0, 0)


def test_closing_and_collecting_topic_subscriptions_unregisters_them() -> None:
    broker = topic_broker()
    first, second = broker.subscribe(topic="red"), broker.subscribe(topic="red")
    wildcard = broker.subscribe()
    first.close()
    broker.publish(EventType.UPDATED, ("red", 1))
    assert (first.pending, second.pending, wildcard.pending) == (0, 1, 1)
    del second
    gc.collect()
    wildcard.close()
    assert broker.subscriber_count == 0
    broker.publish(EventType.UPDATED, ("red", 2))
    assert broker.stats().delivered == 2
    late = broker.subscribe(topic="red")  # a topic emptied and used again
    broker.publish(EventType.UPDATED, ("red", 3))
    assert drain(late) == [("red", 3)]


def test_shutdown_ends_topic_subscriptions_after_they_drain() -> None:
    broker = topic_broker()
    sub = broker.subscribe(topic="red")
    broker.publish(EventType.UPDATED, ("red", 1))
    broker.shutdown()
    broker.publish(EventType.UPDATED, ("red", 2))
    assert drain(sub) == [("red", 1)]
    assert sub.closed
    assert broker.subscribe(topic="red").closed
