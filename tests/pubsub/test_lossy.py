"""The lossy ``publish`` path: never waits, drops per subscriber, counts and signals drops."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from pubsub import Broker, Event, EventType, dropped


def drain(sub: Any) -> list[Any]:
    payloads = []
    while sub.queued:
        payloads.append(sub.receive_nowait().payload)
    return payloads


def test_publish_is_a_plain_sync_method() -> None:
    assert not asyncio.iscoroutinefunction(Broker.publish)


def test_publish_without_subscribers_only_counts_the_publish() -> None:
    broker: Broker[int] = Broker()
    broker.publish(EventType.UPDATED, 1)
    assert broker.stats().published == 1
    assert broker.stats().delivered == broker.drop_count == 0


def test_a_full_subscriber_drops_for_itself_only() -> None:
    broker: Broker[int] = Broker(buffer_size=2)
    small = broker.subscribe()
    large = broker.subscribe(buffer_size=10)
    for n in range(5):
        broker.publish(EventType.UPDATED, n)
    assert drain(small) == [0, 1]
    assert drain(large) == [0, 1, 2, 3, 4]
    stats = broker.stats()
    assert broker.drop_count == stats.dropped == 3
    assert stats.delivered == 7
    assert stats.delivered + stats.dropped == stats.published * 2


def test_room_freed_by_the_consumer_is_used_by_later_events_in_order() -> None:
    broker: Broker[int] = Broker(buffer_size=2)
    sub = broker.subscribe()
    received = []
    for n in range(20):
        broker.publish(EventType.UPDATED, n)
        if n % 3 == 0:
            received.append(sub.receive_nowait().payload)
    received += drain(sub)
    assert received == sorted(received)
    assert len(received) == broker.stats().delivered
    assert broker.drop_count == 20 - len(received)


async def test_a_waiting_reader_wakes_for_a_lossy_event() -> None:
    broker: Broker[str] = Broker()
    sub = broker.subscribe()
    reader = asyncio.create_task(sub.receive())
    await asyncio.sleep(0)  # let the reader start waiting
    broker.publish(EventType.CREATED, "hello")
    async with asyncio.timeout(1):
        event = await reader
    assert event == Event(EventType.CREATED, "hello")


async def test_async_for_sees_events_in_publish_order() -> None:
    broker: Broker[int] = Broker(buffer_size=4)
    sub = broker.subscribe()
    got: list[int] = []

    async def read() -> None:
        async for event in sub:
            got.append(event.payload)

    reader = asyncio.create_task(read())
    for n in range(100):
        broker.publish(EventType.UPDATED, n)
        if n % 4 == 3:
            await asyncio.sleep(0)  # yield so the reader can drain
    broker.shutdown()
    async with asyncio.timeout(1):
        await reader
    assert got == sorted(got)
    assert len(got) + broker.drop_count == 100


def test_drop_signal_fires_once_per_drop_with_sender_event_and_path() -> None:
    broker: Broker[int] = Broker(buffer_size=1)
    other: Broker[int] = Broker(buffer_size=1)
    subs = [broker.subscribe(), broker.subscribe(), other.subscribe()]
    calls: list[tuple[Any, dict[str, Any]]] = []

    def on_drop(sender: Any, **kwargs: Any) -> None:
        calls.append((sender, kwargs))

    with dropped.connected_to(on_drop, sender=broker):
        broker.publish(EventType.UPDATED, 1)
        broker.publish(EventType.UPDATED, 2)
        other.publish(EventType.UPDATED, 1)
        other.publish(EventType.UPDATED, 2)
    event = Event(EventType.UPDATED, 2)
    assert calls == [(broker, {"event": event, "path": "lossy"})] * 2
    assert other.drop_count == 1
    assert [sub.queued for sub in subs] == [1, 1, 1]


def test_a_raising_signal_receiver_is_logged_and_does_not_break_publish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker: Broker[int] = Broker(buffer_size=1)
    sub = broker.subscribe()

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("telemetry bug")

    with dropped.connected_to(broken, sender=broker), caplog.at_level(logging.ERROR, "pubsub"):
        broker.publish(EventType.UPDATED, 1)
        broker.publish(EventType.UPDATED, 2)
    assert broker.drop_count == 1
    assert "pubsub.dropped receiver raised" in caplog.text
    assert drain(sub) == [1]
