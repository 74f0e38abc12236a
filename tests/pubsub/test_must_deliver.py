"""The bounded ``publish_must_deliver`` path: concurrent waits, late events kept, cancellation
that never withdraws, ordering.

Timing: nothing here asserts on the wall clock. Tests that must tell "one timeout" from "eight"
shift the running loop's clock by hand (``shifted_clock``), so the deadline fires exactly when
the test says; every wait is bounded with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Coroutine, Iterator
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


@contextlib.contextmanager
def shifted_clock() -> Iterator[Callable[[float], None]]:
    """Let the test move the running loop's clock forward; yields ``advance(seconds)``.

    Timers (the must-deliver deadline) follow ``loop.time()``, so advancing it by a timeout
    makes exactly the deadlines that are due fire on the next loop turn, however slow the
    machine is.
    """
    loop = asyncio.get_running_loop()
    real_time = loop.time
    shift = 0.0

    def now() -> float:
        return real_time() + shift

    def advance(seconds: float) -> None:
        nonlocal shift
        shift += seconds

    loop.time = now  # type: ignore[method-assign]
    try:
        yield advance
    finally:
        del loop.time


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


async def test_a_stuck_subscriber_times_out_counts_signals_and_keeps_the_event() -> None:
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
    assert (sub.waiting_senders, sub.queued, sub.pending, sub.lost) == (0, 1, 2, 0)
    assert drain(sub) == ["old", "new"]  # late, counted for telemetry, but not lost


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
    timeout = 100.0  # loop-clock seconds: only the test's own clock shifts reach it
    broker: Broker[str] = Broker(must_deliver_timeout=timeout)
    subs = [stuck_subscription(broker) for _ in range(8)]
    live = broker.subscribe()
    with shifted_clock() as advance:
        publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "new"))
        assert [sub.waiting_senders for sub in subs] == [1] * 8
        advance(0.9 * timeout)
        finished, _ = await asyncio.wait({publisher}, timeout=0.05)
        assert not finished, "returned before its timeout"
        advance(0.2 * timeout)  # 1.1 timeouts in total: all eight waits are over
        async with asyncio.timeout(5):
            await publisher
    assert broker.must_deliver_drop_count == 8
    assert all(sub.waiting_senders == 0 for sub in subs)
    assert drain(live) == ["new"]
    assert [drain(sub) for sub in subs] == [["old", "new"]] * 8


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
    assert [drain(sub) for sub in subs] == [["old", "new"]] * 3  # the queue still drains
    stats = broker.stats()  # "old" reached 1 + 2 + 3 subscriptions, "new" 3: 9 pairs
    assert (stats.delivered, stats.dropped, stats.conflated) == (3 + 3, 3, 0)


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


async def test_cancelling_the_publisher_never_withdraws_its_event() -> None:
    """A cancelled terminal publish still reaches every subscriber."""
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
    assert broker.must_deliver_drop_count == 1  # the wait ended unadmitted: counted as late
    assert drain(roomy) == ["new"]
    assert drain(stuck) == ["old", "new"]  # still reaches the slow subscriber, in order
    assert (stuck.lost, roomy.lost) == (0, 0)


async def test_a_reader_receives_the_event_of_a_cancelled_publisher() -> None:
    broker: Broker[int] = Broker(buffer_size=1, must_deliver_timeout=LONG)
    sub = broker.subscribe()
    broker.publish(EventType.UPDATED, 0)
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, 1))
    publisher.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(1):
            await publisher
    async with asyncio.timeout(1):
        got = [(await sub.receive()).payload for _ in range(2)]
    assert got == [0, 1]


async def test_after_cancellation_later_events_keep_their_order() -> None:
    broker: Broker[str] = Broker(buffer_size=2, must_deliver_timeout=LONG)
    sub = broker.subscribe()
    broker.publish(EventType.UPDATED, "a")
    broker.publish(EventType.UPDATED, "b")
    publisher = await started(broker.publish_must_deliver(EventType.UPDATED, "m"))
    publisher.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(1):
            await publisher
    assert (sub.waiting_senders, sub.queued, sub.pending) == (0, 2, 3)
    got = [sub.receive_nowait().payload]  # "a"; "m" is admitted now
    broker.publish(EventType.UPDATED, "c")  # full ("b", "m") and no key: dropped, lost
    last = broker.enqueue_must_deliver(EventType.UPDATED, "d")  # waits behind "b" and "m"
    got += drain(sub)
    async with asyncio.timeout(1):
        await last
    assert got == ["a", "b", "m", "d"]
    assert (sub.lost, broker.drop_count, broker.must_deliver_drop_count) == (1, 1, 1)


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


async def test_cancelling_an_enqueued_must_deliver_only_stops_the_wait() -> None:
    broker: Broker[int] = Broker(must_deliver_timeout=LONG)
    full = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, 0)
    pending = broker.enqueue_must_deliver(EventType.DELETED, 1)
    assert full.waiting_senders == 1
    pending.cancel()
    await asyncio.sleep(0)  # one loop turn: the future's done-callback ends the wait
    assert (full.waiting_senders, broker.must_deliver_drop_count) == (0, 1)
    assert [full.receive_nowait().payload for _ in range(2)] == [0, 1]
    assert (full.pending, full.lost) == (0, 0)


Keyed = tuple[str, int]


def keyed_broker(timeout: float) -> Broker[Keyed]:
    return Broker(must_deliver_timeout=timeout, key=lambda payload: payload[0])


def keyed_drain(sub: Subscription[Keyed]) -> list[tuple[str, Keyed]]:
    events = []
    while sub.queued:
        event = sub.receive_nowait()
        events.append((event.type.value, event.payload))
    return events


async def test_a_slow_subscriber_ends_on_the_final_state_of_a_stream() -> None:
    """A slow UI learns the finish: a lossy stream of k fills a buffer of 2, then k finishes.

    The final state supersedes the stream's queued newest state and is admitted at once.
    """
    broker = keyed_broker(LONG)
    sub = broker.subscribe(buffer_size=2)
    for version in range(50):
        broker.publish(EventType.UPDATED, ("k", version))
    async with asyncio.timeout(1):
        await broker.publish_must_deliver(EventType.UPDATED, ("k", 999))
    events = keyed_drain(sub)
    assert events[-1] == ("updated", ("k", 999))
    assert [version for _, (_, version) in events] == sorted(v for _, (_, v) in events)
    assert (broker.must_deliver_drop_count, sub.lost) == (0, 0)


async def test_a_slow_subscriber_ends_on_a_final_state_that_timed_out() -> None:
    """The terminal event times out, stays queued, and is the last state.

    The buffer of 2 is full of entries the final state cannot supersede (k's CREATED and
    another key's state), the lossy stream of k waits in the overflow as k's newest state,
    and nobody reads until the must-deliver wait has timed out.
    """
    broker = keyed_broker(0.05)
    sub = broker.subscribe(buffer_size=2)
    async with asyncio.timeout(2):
        await broker.publish_must_deliver(EventType.CREATED, ("k", 0))
    broker.publish(EventType.UPDATED, ("other", 0))
    for version in range(1, 50):
        broker.publish(EventType.UPDATED, ("k", version))
    assert (sub.queued, sub.pending) == (2, 3)
    async with asyncio.timeout(2):
        await broker.publish_must_deliver(EventType.UPDATED, ("k", 999))
    assert broker.must_deliver_drop_count == 1
    events = keyed_drain(sub)
    assert events == [
        ("created", ("k", 0)),
        ("updated", ("other", 0)),
        ("updated", ("k", 999)),
    ]
    assert sub.lost == 0


async def test_a_late_must_deliver_update_is_superseded_by_a_newer_update() -> None:
    broker = keyed_broker(LONG)
    sub = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, ("x", 0))
    with shifted_clock() as advance:
        publisher = await started(broker.publish_must_deliver(EventType.UPDATED, ("a", 1)))
        advance(2 * LONG)
        async with asyncio.timeout(5):
            await publisher
    assert (broker.must_deliver_drop_count, sub.pending) == (1, 2)
    broker.publish(EventType.UPDATED, ("a", 2))  # its wait is over: ("a", 1) is replaceable
    assert keyed_drain(sub) == [("updated", ("x", 0)), ("updated", ("a", 2))]
    assert (broker.stats().conflated, sub.lost) == (1, 0)


async def test_a_late_must_deliver_deleted_is_never_removed() -> None:
    broker = keyed_broker(LONG)
    sub = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, ("x", 0))
    with shifted_clock() as advance:
        publisher = await started(broker.publish_must_deliver(EventType.DELETED, ("a", 1)))
        advance(2 * LONG)
        async with asyncio.timeout(5):
            await publisher
    broker.publish(EventType.UPDATED, ("a", 2))  # cannot remove the DELETED: joins behind
    assert keyed_drain(sub) == [
        ("updated", ("x", 0)),
        ("deleted", ("a", 1)),
        ("updated", ("a", 2)),
    ]
    assert (broker.stats().conflated, sub.lost) == (0, 0)


async def test_a_must_deliver_event_finding_the_overflow_at_its_bound_is_lost_at_once() -> None:
    broker: Broker[int] = Broker(must_deliver_timeout=LONG)
    sub = broker.subscribe(buffer_size=1)
    broker.publish(EventType.UPDATED, -1)
    waits = [broker.enqueue_must_deliver(EventType.UPDATED, n) for n in range(1024)]
    assert (sub.pending, sub.waiting_senders) == (1 + 1024, 1024)
    calls: list[str] = []

    def on_drop(sender: Any, *, event: Event[int], path: str) -> None:
        calls.append(path)

    with dropped.connected_to(on_drop, sender=broker):
        extra = broker.enqueue_must_deliver(EventType.DELETED, 1024)
    assert extra.done()  # nothing to wait for: it could not be queued anywhere
    assert (broker.must_deliver_drop_count, sub.lost, calls) == (1, 1, ["must_deliver"])
    broker.shutdown()
    async with asyncio.timeout(5):
        await asyncio.gather(*waits)
    payloads = drain(sub)
    assert payloads == list(range(-1, 1024))
