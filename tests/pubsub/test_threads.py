"""Thread policy: the broker belongs to its creating thread; ``publish`` from other threads is
handed to the owner loop (order kept per thread), other cross-thread calls raise."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from pubsub import Broker, EventType, Subscription


def run_in_thread(func: Callable[[], object]) -> BaseException | None:
    """Run ``func`` in a fresh thread, wait for it, return what it raised (if anything)."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            func()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return raised[0] if raised else None


def drain(sub: Subscription[Any]) -> list[Any]:
    payloads = []
    while sub.queued:
        payloads.append(sub.receive_nowait().payload)
    return payloads


async def test_publish_from_another_thread_is_handed_to_the_loop_in_order() -> None:
    broker: Broker[int] = Broker(buffer_size=200)
    sub = broker.subscribe()

    def produce() -> None:
        for n in range(100):
            broker.publish(EventType.UPDATED, n)

    async with asyncio.timeout(5):
        await asyncio.to_thread(produce)  # its completion is queued behind the hand-overs
        got = [(await sub.receive()).payload for _ in range(100)]
    assert got == list(range(100))
    stats = broker.stats()
    assert (stats.published, stats.delivered, stats.dropped) == (100, 100, 0)


async def test_many_threads_publishing_at_once_corrupt_nothing() -> None:
    broker: Broker[tuple[int, int]] = Broker(buffer_size=4 * 250)
    sub = broker.subscribe()

    def produce(thread_no: int) -> None:
        for n in range(250):
            broker.publish(EventType.UPDATED, (thread_no, n))

    async with asyncio.timeout(10):
        await asyncio.gather(*(asyncio.to_thread(produce, t) for t in range(4)))
    got = drain(sub)
    assert len(got) == 1000
    for thread_no in range(4):
        assert [n for t, n in got if t == thread_no] == list(range(250))
    assert broker.stats().delivered == 1000


async def test_shutdown_and_close_from_another_thread_take_effect_on_the_loop() -> None:
    broker: Broker[int] = Broker()
    closing = broker.subscribe()
    staying = broker.subscribe()
    async with asyncio.timeout(5):
        await asyncio.to_thread(closing.close)
        assert closing.closed
        assert broker.subscriber_count == 1
        await asyncio.to_thread(broker.shutdown)
    assert broker.is_shut_down and staying.closed


async def test_subscribe_from_another_thread_raises() -> None:
    broker: Broker[int] = Broker()
    error = await asyncio.to_thread(run_in_thread, broker.subscribe)
    assert isinstance(error, RuntimeError)
    assert "belongs to thread" in str(error)
    assert broker.subscriber_count == 0


async def test_publish_must_deliver_from_another_loop_thread_raises() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()

    def publish_in_own_loop() -> None:
        asyncio.run(broker.publish_must_deliver(EventType.DELETED, 1))

    error = await asyncio.to_thread(run_in_thread, publish_in_own_loop)
    assert isinstance(error, RuntimeError)
    assert "publish_must_deliver" in str(error)
    assert sub.queued == 0 and broker.stats().published == 0


async def test_receive_from_another_thread_raises() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    broker.publish(EventType.UPDATED, 1)
    error = await asyncio.to_thread(run_in_thread, sub.receive_nowait)
    assert isinstance(error, RuntimeError)
    assert sub.queued == 1


def test_publish_from_a_thread_before_any_loop_was_seen_raises() -> None:
    broker: Broker[int] = Broker()  # created outside any event loop
    sub = broker.subscribe()
    error = run_in_thread(lambda: broker.publish(EventType.UPDATED, 1))
    assert isinstance(error, RuntimeError)
    assert "no loop to hand the call to" in str(error)
    assert sub.queued == 0


def test_publish_from_a_thread_after_the_loop_closed_raises() -> None:
    async def build() -> tuple[Broker[int], Subscription[int]]:
        broker: Broker[int] = Broker()
        return broker, broker.subscribe()

    broker, sub = asyncio.run(build())
    error = run_in_thread(lambda: broker.publish(EventType.UPDATED, 1))
    assert isinstance(error, RuntimeError)
    assert "closed" in str(error)
    assert sub.queued == 0
    sub.close()


def test_publish_on_the_owner_thread_needs_no_running_loop() -> None:
    broker: Broker[int] = Broker()
    sub = broker.subscribe()
    broker.publish(EventType.CREATED, 1)
    assert drain(sub) == [1]


def test_gc_of_a_subscription_on_another_thread_is_handed_over() -> None:
    async def scenario() -> int:
        broker: Broker[int] = Broker()
        holder = [broker.subscribe() for _ in range(3)]
        await asyncio.to_thread(holder.clear)  # last references die in the worker thread
        return broker.subscriber_count

    assert asyncio.run(scenario()) == 0
