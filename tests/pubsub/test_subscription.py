"""Subscription life cycle: receiving, close, shutdown (drain, then end), gc, one consumer."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from pubsub import Broker, EventType, Subscription, SubscriptionEnded, WouldBlock


async def collect(sub: Subscription[int]) -> list[int]:
    return [event.payload async for event in sub]


async def test_shutdown_ends_a_waiting_async_for() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    reader = asyncio.create_task(collect(sub))
    await asyncio.sleep(0)  # the reader now waits for an event
    broker.shutdown()
    async with asyncio.timeout(1):
        assert await reader == []


async def test_shutdown_lets_buffered_events_drain_first() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    for n in range(3):
        broker.publish(EventType.UPDATED, n)
    broker.shutdown()
    broker.publish(EventType.UPDATED, 99)  # reaches nobody
    async with asyncio.timeout(1):
        assert await collect(sub) == [0, 1, 2]
    assert sub.closed
    assert broker.subscriber_count == 0
    assert broker.stats().published == 4


async def test_shutdown_is_idempotent_and_later_calls_are_harmless() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    broker.shutdown()
    broker.shutdown()
    assert broker.is_shut_down
    sub.close()
    async with asyncio.timeout(1):
        await broker.publish_must_deliver(EventType.DELETED, 1)


async def test_subscribe_after_shutdown_is_already_ended() -> None:
    broker: Broker[int] = Broker()
    broker.shutdown()
    sub = broker.subscribe()
    assert sub.closed
    assert broker.subscriber_count == 0
    async with asyncio.timeout(1):
        assert await collect(sub) == []
    with pytest.raises(SubscriptionEnded):
        await sub.receive()


async def test_close_ends_iteration_and_discards_buffered_events() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    broker.publish(EventType.UPDATED, 1)
    sub.close()
    sub.close()  # idempotent
    assert broker.subscriber_count == 0
    assert sub.closed and sub.queued == 0
    async with asyncio.timeout(1):
        assert await collect(sub) == []
    with pytest.raises(SubscriptionEnded):
        sub.receive_nowait()
    broker.publish(EventType.UPDATED, 2)
    assert broker.stats().delivered == 1


async def test_close_wakes_a_waiting_reader() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    reader = asyncio.create_task(collect(sub))
    await asyncio.sleep(0)
    sub.close()
    async with asyncio.timeout(1):
        assert await reader == []


async def test_async_with_closes_the_subscription() -> None:
    broker: Broker[int] = Broker()
    async with broker.subscribe() as sub:
        broker.publish(EventType.CREATED, 7)
        event = await sub.receive()
        assert event.payload == 7
        assert broker.subscriber_count == 1
    assert sub.closed
    assert broker.subscriber_count == 0


def test_receive_nowait_says_would_block_when_empty() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    with pytest.raises(WouldBlock):
        sub.receive_nowait()
    broker.publish(EventType.UPDATED, 1)
    assert sub.receive_nowait().payload == 1
    assert "open" in repr(sub)


async def test_a_second_concurrent_receiver_is_a_clear_error() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    first = asyncio.create_task(sub.receive())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one consumer"):
        await sub.receive()
    broker.publish(EventType.UPDATED, 5)
    async with asyncio.timeout(1):
        assert (await first).payload == 5


async def test_a_cancelled_receive_leaves_no_waiter_behind() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    reader = asyncio.create_task(sub.receive())
    await asyncio.sleep(0)
    assert not reader.done(), "the receive must really be waiting before it is cancelled"
    with pytest.raises(RuntimeError, match="one consumer"):
        await sub.receive()  # proof that it waits: a second receiver is refused
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(1):
            await reader
    next_reader = asyncio.create_task(sub.receive())  # no stale waiter may refuse it
    await asyncio.sleep(0)
    assert not next_reader.done()
    broker.publish(EventType.UPDATED, 1)  # published after the cancellation
    async with asyncio.timeout(1):
        assert (await next_reader).payload == 1
    assert sub.pending == 0


async def test_a_receive_cancelled_after_its_wake_up_loses_no_event() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    reader = asyncio.create_task(sub.receive())
    await asyncio.sleep(0)
    assert not reader.done()
    broker.publish(EventType.UPDATED, 1)  # wakes the reader, which has not run yet...
    reader.cancel()  # ...and is cancelled before it takes the event
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(1):
            await reader
    assert sub.queued == 1
    async with asyncio.timeout(1):
        assert (await sub.receive()).payload == 1


def test_an_unclosed_subscription_is_released_by_garbage_collection() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    ref = weakref.ref(sub)
    del sub
    gc.collect()
    assert ref() is None
    assert broker.subscriber_count == 0
    broker.publish(EventType.UPDATED, 1)
    assert broker.stats().delivered == 0


def test_a_subscription_in_a_reference_cycle_is_released_by_gc_collect() -> None:
    broker: Broker[int] = Broker()
    holder: list[object] = []
    holder.append(holder)
    holder.append(broker.subscribe())
    del holder
    assert broker.subscriber_count == 1  # the cycle keeps it until the collector runs
    gc.collect()
    assert broker.subscriber_count == 0


def test_the_broker_outlives_nothing_it_should_not() -> None:
    broker: Broker[int] = Broker()
    subs = [broker.subscribe() for _ in range(5)]
    assert broker.subscriber_count == 5
    subs[1].close()
    del subs[3]
    gc.collect()
    assert broker.subscriber_count == 3
    broker.publish(EventType.UPDATED, 1)
    assert [sub.queued for sub in subs] == [1, 0, 1, 1]
