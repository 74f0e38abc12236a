"""Conflation with ``key=``: a full subscription removes its key's replaceable entry and
appends the newer event at the end, so it never moves an event ahead of an earlier one.

The random-interleaving property (with must-deliver events, topics and a reference model)
lives in ``test_pubsub_order.py``; these are the worked examples.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pubsub import Broker, EventType, Subscription, dropped

Payload = tuple[str, int]  # (key, version)


def keyed_broker(buffer_size: int, **kwargs: Any) -> Broker[Payload]:
    return Broker(buffer_size=buffer_size, key=lambda payload: payload[0], **kwargs)


def drain(sub: Subscription[Payload]) -> list[tuple[str, Payload]]:
    events = []
    while sub.queued:
        event = sub.receive_nowait()
        events.append((event.type.value, event.payload))
    return events


def updated(broker: Broker[Payload], key: str, version: int) -> None:
    broker.publish(EventType.UPDATED, (key, version))


def test_a_newer_update_removes_the_queued_one_and_joins_at_the_end() -> None:
    broker = keyed_broker(3)
    sub = broker.subscribe()
    for key in "abc":
        updated(broker, key, 1)
    updated(broker, "a", 2)
    updated(broker, "b", 2)
    updated(broker, "a", 3)
    # publish order is a1 b1 c1 a2 b2 a3: what arrives is a subsequence of it, in order
    assert drain(sub) == [("updated", ("c", 1)), ("updated", ("b", 2)), ("updated", ("a", 3))]
    stats = broker.stats()
    assert (stats.delivered, stats.conflated, stats.dropped) == (3, 3, 0)
    assert sub.lost == 0


def test_a_slow_subscriber_ends_on_the_newest_state_of_every_key() -> None:
    broker = keyed_broker(3)
    sub = broker.subscribe()
    for version in range(1000):
        for key in "xyz":
            updated(broker, key, version)
    assert drain(sub) == [("updated", (key, 999)) for key in "xyz"]
    assert broker.drop_count == 0


def test_conflation_only_happens_when_the_buffer_is_full() -> None:
    broker = keyed_broker(4)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    updated(broker, "a", 2)
    assert drain(sub) == [("updated", ("a", 1)), ("updated", ("a", 2))]
    assert broker.stats().conflated == 0


def test_without_a_key_function_a_full_buffer_just_drops() -> None:
    broker: Broker[Payload] = Broker(buffer_size=1)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    updated(broker, "a", 2)
    assert drain(sub) == [("updated", ("a", 1))]
    assert (broker.drop_count, broker.stats().conflated) == (1, 0)


def test_created_and_deleted_are_never_replaced() -> None:
    broker = keyed_broker(2)
    sub = broker.subscribe()
    broker.publish(EventType.CREATED, ("a", 0))
    broker.publish(EventType.DELETED, ("b", 0))
    updated(broker, "a", 1)  # nothing replaceable queued: held as a's newest state
    updated(broker, "b", 1)
    assert drain(sub) == [
        ("created", ("a", 0)),
        ("deleted", ("b", 0)),
        ("updated", ("a", 1)),
        ("updated", ("b", 1)),
    ]
    assert broker.drop_count == 0


def test_a_lossy_created_or_deleted_supersedes_an_update_of_its_key() -> None:
    broker = keyed_broker(1)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    broker.publish(EventType.DELETED, ("a", 2))  # newer than the queued update: it wins
    assert drain(sub) == [("deleted", ("a", 2))]
    assert (broker.drop_count, broker.stats().conflated, sub.lost) == (0, 1, 0)


def test_a_lossy_created_or_deleted_with_nothing_to_supersede_is_dropped_and_lost() -> None:
    broker = keyed_broker(1)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    broker.publish(EventType.DELETED, ("b", 1))
    broker.publish(EventType.CREATED, ("c", 1))
    assert drain(sub) == [("updated", ("a", 1))]
    assert (broker.drop_count, sub.lost) == (2, 2)


def test_superseding_never_moves_an_event_ahead_of_an_earlier_one() -> None:
    broker = keyed_broker(3)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    broker.publish(EventType.DELETED, ("a", 2))
    updated(broker, "b", 1)
    updated(broker, "a", 3)  # removes ("a", 1); joins behind the DELETED and ("b", 1)
    assert drain(sub) == [
        ("deleted", ("a", 2)),
        ("updated", ("b", 1)),
        ("updated", ("a", 3)),
    ]
    assert (broker.drop_count, broker.stats().conflated, sub.lost) == (0, 1, 0)


def test_an_update_queued_after_the_seal_is_replaceable_again() -> None:
    broker = keyed_broker(3)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    broker.publish(EventType.CREATED, ("a", 2))
    updated(broker, "a", 3)
    updated(broker, "a", 4)
    assert drain(sub)[-1] == ("updated", ("a", 4))
    assert broker.stats().conflated == 1


async def test_a_must_deliver_update_is_never_replaced() -> None:
    broker = keyed_broker(2)
    sub = broker.subscribe()
    async with asyncio.timeout(1):
        await broker.publish_must_deliver(EventType.UPDATED, ("a", 1))
    updated(broker, "b", 1)
    updated(broker, "a", 2)  # held behind the must-deliver ("a", 1), never replacing it
    assert drain(sub) == [("updated", ("a", 1)), ("updated", ("b", 1)), ("updated", ("a", 2))]
    assert broker.drop_count == 0


async def test_a_must_deliver_event_supersedes_its_keys_replaceable_entry() -> None:
    broker = keyed_broker(2, must_deliver_timeout=10.0)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    updated(broker, "b", 1)
    async with asyncio.timeout(1):  # ("a", 1) goes, which frees an admitted place: no wait
        await broker.publish_must_deliver(EventType.UPDATED, ("a", 2))
    assert sub.waiting_senders == 0
    assert drain(sub) == [("updated", ("b", 1)), ("updated", ("a", 2))]
    stats = broker.stats()
    assert (stats.delivered, stats.conflated, stats.must_deliver_dropped) == (2, 1, 0)


async def test_a_waiting_must_deliver_event_is_never_superseded() -> None:
    broker = keyed_broker(2, must_deliver_timeout=10.0)
    sub = broker.subscribe()
    updated(broker, "x", 1)
    updated(broker, "y", 1)
    publisher = asyncio.create_task(broker.publish_must_deliver(EventType.UPDATED, ("a", 2)))
    await asyncio.sleep(0)  # one loop turn: the publisher is now waiting for room
    assert (sub.waiting_senders, sub.queued, sub.pending) == (1, 2, 3)
    updated(broker, "a", 3)  # cannot remove the waited-for ("a", 2): joins behind it
    updated(broker, "a", 4)  # supersedes ("a", 3)
    updated(broker, "y", 2)  # supersedes ("y", 1), joins at the end
    assert sub.receive_nowait().payload == ("x", 1)  # ("a", 2) is admitted now
    async with asyncio.timeout(1):
        await publisher
    assert drain(sub) == [("updated", ("a", 2)), ("updated", ("a", 4)), ("updated", ("y", 2))]
    stats = broker.stats()
    assert (stats.dropped, stats.conflated, stats.must_deliver_dropped) == (0, 2, 0)


def test_conflation_is_not_a_drop_and_does_not_signal() -> None:
    broker = keyed_broker(1)
    sub = broker.subscribe()
    calls: list[Any] = []

    def on_drop(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    with dropped.connected_to(on_drop, sender=broker):
        updated(broker, "a", 1)
        updated(broker, "a", 2)
    assert calls == []
    assert drain(sub) == [("updated", ("a", 2))]


def test_each_subscriber_conflates_on_its_own() -> None:
    broker = keyed_broker(1)
    slow = broker.subscribe()
    fast = broker.subscribe(buffer_size=10)
    updated(broker, "a", 1)
    updated(broker, "a", 2)
    assert drain(slow) == [("updated", ("a", 2))]
    assert drain(fast) == [("updated", ("a", 1)), ("updated", ("a", 2))]
    assert broker.stats().conflated == 1


def test_a_raising_key_function_fails_the_publish_before_any_state_changes() -> None:
    def key(payload: Payload) -> str:
        if payload[0] == "bad":
            raise KeyError("no key for this payload")
        return payload[0]

    broker: Broker[Payload] = Broker(buffer_size=2, key=key)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    with pytest.raises(KeyError, match="no key"):
        updated(broker, "bad", 2)
    assert broker.stats().published == 1
    assert drain(sub) == [("updated", ("a", 1))]


def test_more_keys_than_buffer_still_end_on_their_newest_state() -> None:
    broker = keyed_broker(2)
    sub = broker.subscribe()
    for version in range(50):
        for key in "abcdef":
            updated(broker, key, version)
    newest: dict[str, int] = {}
    for _, (key, version) in drain(sub):
        assert version >= newest.get(key, -1), "a key went back in time"
        newest[key] = version
    assert newest == dict.fromkeys("abcdef", 49)
    assert broker.drop_count == 0


async def test_a_held_newest_state_gives_way_to_a_later_must_deliver_event() -> None:
    broker = keyed_broker(1, must_deliver_timeout=10.0)
    sub = broker.subscribe()
    updated(broker, "x", 0)
    updated(broker, "a", 1)  # held
    publisher = asyncio.ensure_future(broker.publish_must_deliver(EventType.DELETED, ("a", 2)))
    await asyncio.sleep(0)
    assert drain(sub) == [("updated", ("x", 0)), ("deleted", ("a", 2))]
    async with asyncio.timeout(1):
        await publisher
    assert broker.stats().conflated == 1  # the held ("a", 1) was superseded, not delivered


def test_the_overflow_is_bounded_then_new_keys_are_dropped_and_lost() -> None:
    broker = keyed_broker(1)
    sub = broker.subscribe()
    assert sub.overflow_limit == 1024
    updated(broker, "first", 0)
    for i in range(2000):
        updated(broker, f"key-{i}", 0)
    assert (sub.queued, sub.pending) == (1, 1 + 1024)
    assert broker.drop_count == sub.lost == 2000 - 1024
    updated(broker, "key-5", 1)  # a key already queued still supersedes at the bound
    assert broker.drop_count == 2000 - 1024
    events = drain(sub)
    assert len(events) == 1 + 1024
    assert events[-1] == ("updated", ("key-5", 1))


def test_the_overflow_bound_grows_with_the_buffer() -> None:
    broker = keyed_broker(100)
    assert broker.subscribe().overflow_limit == 1600
    assert broker.subscribe(buffer_size=3).overflow_limit == 1024


def test_the_key_index_stays_bounded_while_many_keys_flow_through() -> None:
    """White-box: numbers of events already taken are forgotten, even if the queue never
    empties (a subscriber that always lags by one event, over many message ids)."""
    broker = keyed_broker(4)
    sub = broker.subscribe()
    updated(broker, "first", 0)
    for n in range(10_000):
        updated(broker, f"key-{n}", n)
        sub.receive_nowait()
    assert sub.pending == 1
    assert len(sub._inbox._replaceable) < 100
    for n in range(4):
        updated(broker, "late", n)  # the last of these supersedes the one before it
    assert drain(sub) == [("updated", ("key-9999", 9999))] + [
        ("updated", ("late", n)) for n in (0, 1, 3)
    ]
