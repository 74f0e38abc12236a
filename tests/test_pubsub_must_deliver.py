"""The bounded ``publish_must_deliver`` path: concurrent waits, drops, cancellation, ordering."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from pubsub import Broker, Event, EventType, Subscription, dropped

LONG = 10.0  # a timeout no test should ever reach; reaching it fails the bounded wait below


def drain(sub: Subscription[Any]) -> list[Any]:
    payloads = []
    while sub.queued:
        payloads.append(sub.receive_nowait().payload)
    return payloads


def stuck_subscription(broker: Broker[str], fill: str = "old") -> Subscription[str]:
    """A subscription with buffer size 1, already full."""
    sub = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, fill)
    return sub


async def started(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coro`` as a task up to its first suspension (one loop turn, deterministic)."""
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    return task


async def test_immediate_delivery_when_there_is_room() -> None:
    broker: Broker[str] = Broker(buffer_size=4)
    sub = broker.subscribe()
    async with asyncio.timeout(1):
        await broker.publish_must_deliver(EventType.CREATED, "a")
    assert drain(sub) == ["a"]
    assert broker.stats().delivered == 1


async def test_publish_without_subscribers_returns_at_once() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    async with asyncio.timeout(1):
        await broker.publish_must_deliver(EventType.DELETED, "gone")
    assert broker.stats().published == 1


async def test_a_stuck_subscriber_times_out_drops_counts_and_signals() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=0.05)
    sub = stuck_subscription(broker)
    calls: list[dict[str, Any]] = []

    def on_drop(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    with dropped.connected_to(on_drop, sender=broker):
        async with asyncio.timeout(2):
            await broker.publish_must_deliver(EventType.UPDATED, "new")
    assert broker.must_deliver_drop_count == 1
    assert broker.drop_count == 0
    assert calls == [{"event": Event(EventType.UPDATED, "new"), "path": "must_deliver"}]
    assert sub.waiting_senders == 0
    assert drain(sub) == ["old"]


async def test_ten_of_ten_reach_a_live_reader_through_a_tiny_buffer() -> None:
    broker: Broker[int] = Broker(buffer_size=1, must_deliver_timeout=LONG)
    sub = broker.subscribe()
    got: list[int] = []

    async def read() -> None:
        async for event in sub:
            got.append(event.payload)

    reader = asyncio.create_task(read())
    async with asyncio.timeout(5):
        for n in range(10):
            await broker.publish_must_deliver(EventType.UPDATED, n)
        broker.shutdown()
        await reader
    assert got == list(range(10))
    assert broker.must_deliver_drop_count == broker.drop_count == 0
    assert broker.stats().delivered == 10


async def test_eight_stuck_subscribers_cost_one_timeout_not_eight() -> None:
    timeout = 0.2
    broker: Broker[str] = Broker(must_deliver_timeout=timeout)
    subs = [stuck_subscription(broker) for _ in range(8)]
    live = broker.subscribe()
    start = time.monotonic()
    async with asyncio.timeout(10 * timeout):
        await broker.publish_must_deliver(EventType.UPDATED, "new")
    elapsed = time.monotonic() - start
    assert timeout * 0.9 <= elapsed < 3 * timeout
    assert broker.must_deliver_drop_count == 8
    assert all(sub.waiting_senders == 0 for sub in subs)
    assert drain(live) == ["new"]


async def test_a_sender_waits_until_the_consumer_makes_room() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    sub = stuck_subscription(broker)
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "new"))
    assert sub.waiting_senders == 1
    assert not publisher.done()
    assert sub.receive_nowait().payload == "old"  # the waiting event moves in at once
    assert sub.waiting_senders == 0
    async with asyncio.timeout(1):
        await publisher
    assert drain(sub) == ["new"]
    assert broker.must_deliver_drop_count == 0
    assert broker.stats().delivered == 2


async def test_later_lossy_events_do_not_overtake_a_waiting_sender() -> None:
    broker: Broker[str] = Broker(buffer_size=2, must_deliver_timeout=LONG)
    sub = broker.subscribe()
    broker.publish(EventType.UPDATED, "u1")
    broker.publish(EventType.UPDATED, "u2")
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "m3"))
    broker.publish(EventType.UPDATED, "u4")  # dropped: the waiting m3 keeps the buffer full
    assert broker.drop_count == 1
    assert sub.receive_nowait().payload == "u1"
    broker.publish(EventType.UPDATED, "u5")  # still full: m3 took the freed place
    async with asyncio.timeout(1):
        await publisher
    assert drain(sub) == ["u2", "m3"]
    broker.publish(EventType.UPDATED, "u6")
    assert drain(sub) == ["u6"]
    assert broker.drop_count == 2


async def test_concurrent_must_deliver_senders_keep_their_order() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    sub = stuck_subscription(broker)
    first = await started(broker.publish_must_deliver(EventType.UPDATED, "m1"))
    second = await started(broker.publish_must_deliver(EventType.DELETED, "m2"))
    assert sub.waiting_senders == 2
    got = [(await sub.receive()).payload for _ in range(3)]
    async with asyncio.timeout(1):
        await asyncio.gather(first, second)
    assert got == ["old", "m1", "m2"]


async def test_subscribe_close_and_stats_return_at_once_during_a_wait() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    sub = stuck_subscription(broker)
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "new"))
    late = broker.subscribe()  # sync; no lock to wait behind
    assert late.queued == 0  # it joined after the fan-out
    assert broker.stats().subscribers == 2
    sub.close()  # releases the waiting sender: not a drop, the subscriber is gone
    async with asyncio.timeout(1):
        await publisher
    assert broker.must_deliver_drop_count == 0
    assert broker.subscriber_count == 1


async def test_shutdown_during_a_wait_releases_the_sender_at_once() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    subs = [stuck_subscription(broker) for _ in range(3)]
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "new"))
    assert [sub.waiting_senders for sub in subs] == [1, 1, 1]
    broker.shutdown()
    async with asyncio.timeout(1):
        await publisher
    assert broker.must_deliver_drop_count == 0
    assert [drain(sub) for sub in subs] == [["old"]] * 3  # buffered events still drain


async def test_garbage_collecting_a_stuck_subscription_releases_the_sender() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    stuck_subscription(broker)  # never referenced again
    gc.collect()
    assert broker.subscriber_count == 0
    sub = stuck_subscription(broker)
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "new"))
    del sub
    gc.collect()
    async with asyncio.timeout(1):
        await publisher
    assert broker.subscriber_count == 0
    assert broker.must_deliver_drop_count == 0


async def test_cancelling_the_publisher_leaves_no_waiter_and_no_half_event() -> None:
    broker: Broker[str] = Broker(must_deliver_timeout=LONG)
    stuck = stuck_subscription(broker)
    roomy = broker.subscribe()
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "new"))
    assert stuck.waiting_senders == 1
    publisher.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(1):
            await publisher
    assert stuck.waiting_senders == 0
    assert broker.must_deliver_drop_count == 1  # documented: cancelled undelivered = drop
    assert drain(roomy) == ["new"]  # had room: got the whole event at once
    assert drain(stuck) == ["old"]  # 'new' never half-arrives later
    broker.publish(EventType.UPDATED, "later")
    assert drain(stuck) == ["later"]


async def test_after_cancellation_later_events_arrive_in_order() -> None:
    broker: Broker[str] = Broker(buffer_size=2, must_deliver_timeout=LONG)
    sub = broker.subscribe()
    broker.publish(EventType.UPDATED, "a")
    broker.publish(EventType.UPDATED, "b")
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "cancelled"))
    publisher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publisher
    assert sub.waiting_senders == 0
    got = [sub.receive_nowait().payload]
    broker.publish(EventType.UPDATED, "c")
    got += [sub.receive_nowait().payload]
    async with asyncio.timeout(1):
        await broker.publish_must_deliver(EventType.UPDATED, "d")
    got += drain(sub)
    assert got == ["a", "b", "c", "d"]


async def test_enqueue_must_deliver_takes_its_place_before_the_caller_yields() -> None:
    broker: Broker[int] = Broker(key=lambda n: n % 10)
    roomy = broker.subscribe(buffer_size=4)
    full = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, 0)  # fills `full`
    first = broker.enqueue_must_deliver(EventType.UPDATED, 1)
    second = broker.enqueue_must_deliver(EventType.UPDATED, 2)
    broker.publish(EventType.UPDATED, 11)  # same key as 1: must not overtake it
    assert [roomy.receive_nowait().payload for _ in range(4)] == [0, 1, 2, 11]
    got = [(await asyncio.wait_for(full.receive(), 1)).payload for _ in range(3)]
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert got == [0, 1, 2]
    assert broker.must_deliver_drop_count == 0


async def test_cancelling_an_enqueued_must_deliver_withdraws_it() -> None:
    broker: Broker[int] = Broker(must_deliver_timeout=5)
    full = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, 0)
    pending = broker.enqueue_must_deliver(EventType.DELETED, 1)
    pending.cancel()
    await asyncio.sleep(0)  # let the future's callbacks run
    assert full.receive_nowait().payload == 0
    assert full.queued == 0
    assert broker.must_deliver_drop_count == 1
