"""Conflation with ``key=``: a full buffer replaces the queued lossy UPDATED of the same key.

Besides the examples, a hypothesis property drives random publish/receive interleavings
(synchronously: ``publish`` and ``receive_nowait`` need no event loop) and checks the
documented invariants: per-key order, the newest state wins, only lossy UPDATED events are
ever replaced, and the counters add up.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pubsub import Broker, Event, EventType, Subscription, dropped

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


def test_newer_update_replaces_the_queued_one_in_place() -> None:
    broker = keyed_broker(3)
    sub = broker.subscribe()
    for key in "abc":
        updated(broker, key, 1)
    updated(broker, "a", 2)
    updated(broker, "b", 2)
    updated(broker, "a", 3)
    assert drain(sub) == [("updated", ("a", 3)), ("updated", ("b", 2)), ("updated", ("c", 1))]
    stats = broker.stats()
    assert (stats.delivered, stats.conflated, stats.dropped) == (3, 3, 0)


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


def test_a_lossy_created_or_deleted_does_not_replace_an_update() -> None:
    broker = keyed_broker(1)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    broker.publish(EventType.DELETED, ("a", 2))
    assert drain(sub) == [("updated", ("a", 1))]
    assert broker.drop_count == 1


def test_a_later_event_of_the_key_seals_the_older_slot() -> None:
    broker = keyed_broker(3)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    broker.publish(EventType.DELETED, ("a", 2))
    updated(broker, "b", 1)
    updated(broker, "a", 3)  # replacing ("a", 1) would put it before the DELETED: held
    assert drain(sub) == [
        ("updated", ("a", 1)),
        ("deleted", ("a", 2)),
        ("updated", ("b", 1)),
        ("updated", ("a", 3)),
    ]
    assert (broker.drop_count, broker.stats().conflated) == (0, 0)


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


async def test_a_waiting_must_deliver_event_seals_its_key_only() -> None:
    broker = keyed_broker(2, must_deliver_timeout=10.0)
    sub = broker.subscribe()
    updated(broker, "a", 1)
    updated(broker, "b", 1)
    publisher = asyncio.create_task(broker.publish_must_deliver(EventType.UPDATED, ("a", 2)))
    await asyncio.sleep(0)  # one loop turn: the publisher is now waiting for room
    assert sub.waiting_senders == 1
    updated(broker, "a", 3)  # must not jump ahead of the waiting ("a", 2): held behind it
    updated(broker, "b", 2)  # another key: conflated into ("b", 1)'s slot
    assert sub.receive_nowait().payload == ("a", 1)
    async with asyncio.timeout(1):
        await publisher
    assert drain(sub) == [("updated", ("b", 2)), ("updated", ("a", 2)), ("updated", ("a", 3))]
    stats = broker.stats()
    assert (stats.dropped, stats.conflated, stats.must_deliver_dropped) == (0, 1, 0)


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


# --------------------------------------------------------------------- property


publish_op = st.tuples(st.just("publish"), st.sampled_from(list(EventType)), st.sampled_from("abc"))
receive_op = st.tuples(st.just("receive"), st.integers(1, 4), st.just(""))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    buffer_size=st.integers(1, 4),
    use_key=st.booleans(),
    ops=st.lists(st.one_of(publish_op, receive_op), max_size=60),
)
def test_random_interleavings_keep_the_documented_invariants(
    buffer_size: int, use_key: bool, ops: list[tuple[str, Any, Any]]
) -> None:
    key = (lambda payload: payload[0]) if use_key else None
    broker: Broker[Payload] = Broker(buffer_size=buffer_size, key=key)
    sub = broker.subscribe()
    published: list[Event[Payload]] = []
    lost: list[Event[Payload]] = []
    received: list[Event[Payload]] = []

    def on_drop(sender: Any, *, event: Event[Payload], path: str) -> None:
        lost.append(event)

    with dropped.connected_to(on_drop, sender=broker):
        for version, (op, arg, name) in enumerate(ops):
            if op == "publish":
                published.append(Event(arg, (name, version)))
                broker.publish(arg, (name, version))
            else:
                received += [sub.receive_nowait() for _ in range(min(arg, sub.queued))]
        while sub.queued:
            received.append(sub.receive_nowait())

    stats = broker.stats()
    assert stats.published == len(published)
    assert stats.delivered == len(received)
    assert stats.dropped == len(lost)
    assert stats.delivered + stats.conflated + stats.dropped == stats.published
    if not use_key:
        assert stats.conflated == 0

    by_version = {event.payload[1]: event for event in published}
    assert all(by_version[event.payload[1]] == event for event in received + lost)

    versions_per_key: dict[str, list[int]] = defaultdict(list)
    for event in received:
        versions_per_key[event.payload[0]].append(event.payload[1])
    for versions in versions_per_key.values():
        assert versions == sorted(versions), "one key's events were reordered"
    if not use_key:
        all_versions = [event.payload[1] for event in received]
        assert all_versions == sorted(all_versions)

    seen = {event.payload[1] for event in received} | {event.payload[1] for event in lost}
    replaced = [event for event in published if event.payload[1] not in seen]
    assert len(replaced) == stats.conflated
    for event in replaced:
        assert event.type is EventType.UPDATED, "only lossy UPDATED events may be replaced"
        newer = versions_per_key[event.payload[0]]
        assert any(v > event.payload[1] for v in newer), "a replaced event left no newer state"

    last_per_key = {event.payload[0]: event for event in published}
    for name, last in last_per_key.items():
        if last not in lost:
            assert versions_per_key[name][-1] == last.payload[1], "a stale state was kept"
    assert sub._inbox._slot_by_key == {}, "the key index outlived the buffered events"


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


def test_held_states_are_bounded_then_dropped() -> None:
    broker = keyed_broker(1)
    sub = broker.subscribe()
    updated(broker, "first", 0)
    for i in range(2000):
        updated(broker, f"key-{i}", 0)
    assert broker.drop_count == 2000 - 1024
    assert len(drain(sub)) == 1 + 1024
