"""Events that carry a delta, and ``Broker(conflate=...)`` merging them when conflation
removes a queued event.

The model used here: a payload is ``(key, version)`` and a delta is ``(base, version)``, the
version it applies to and the one it makes. A consumer applies a delta only to the version it
holds; with ``conflate`` merging ``(a, b)`` and ``(b, c)`` into ``(a, c)``, a slow consumer
that applies every delta it receives always ends on the newest version of every key, however
many events conflation removed.
"""

from __future__ import annotations

import asyncio
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from pubsub import Broker, Event, EventType

Payload = tuple[str, int]
Delta = tuple[int, int]


def merge(older: Event[Payload], newer: Event[Payload]) -> Event[Payload]:
    """Compose the deltas of a removed event and the newer one; whole when they do not chain."""
    if older.delta is None or newer.delta is None or older.delta[1] != newer.delta[0]:
        return Event(newer.type, newer.payload)
    return Event(newer.type, newer.payload, (older.delta[0], newer.delta[1]))


def broker(buffer_size: int, conflate: bool = True) -> Broker[Payload]:
    return Broker(
        buffer_size=buffer_size,
        key=lambda payload: payload[0],
        conflate=merge if conflate else None,
    )


def publish(b: Broker[Payload], key: str, version: int) -> None:
    b.publish(EventType.UPDATED, (key, version), (version - 1, version))


def test_an_event_carries_its_delta_and_equality_ignores_it() -> None:
    b = broker(4)
    sub = b.subscribe()
    publish(b, "a", 1)
    event = sub.receive_nowait()
    assert event.delta == (0, 1)
    assert event == Event(EventType.UPDATED, ("a", 1))
    assert hash(event) == hash(Event(EventType.UPDATED, ("a", 1), "other"))


def test_conflation_merges_the_removed_delta_into_the_newer_one() -> None:
    b = broker(2)
    sub = b.subscribe()
    publish(b, "w", 1)  # admitted; w is never replaceable again once taken
    assert sub.receive_nowait().delta == (0, 1)
    publish(b, "z", 1)
    for version in range(2, 6):
        publish(b, "w", version)  # w2 admitted, then w3..w5 supersede it one by one
    events = [sub.receive_nowait() for _ in range(sub.pending)]
    assert [(e.payload, e.delta) for e in events] == [(("z", 1), (0, 1)), (("w", 5), (1, 5))]
    assert b.stats().conflated == 3


def test_without_conflate_the_newer_event_keeps_its_own_delta() -> None:
    b = broker(1, conflate=False)
    sub = b.subscribe()
    for version in range(1, 4):
        publish(b, "x", version)
    assert [e.delta for e in [sub.receive_nowait()]] == [(2, 3)]  # x1 and x2 were removed


async def test_a_must_deliver_event_that_supersedes_gets_the_merged_delta() -> None:
    b = broker(1)
    b.must_deliver_timeout = 0.01
    sub = b.subscribe()
    b.publish(EventType.CREATED, ("y", 0))  # never replaceable: fills the buffer
    publish(b, "y", 1)  # lossy: waits in the overflow as y's newest state
    publish(b, "y", 2)  # supersedes y1
    await b.publish_must_deliver(EventType.UPDATED, ("y", 3), (2, 3))  # supersedes y2
    events = [sub.receive_nowait() for _ in range(sub.pending)]
    assert [(e.payload, e.delta) for e in events] == [(("y", 0), None), (("y", 3), (0, 3))]


async def test_a_publish_from_another_thread_keeps_its_delta() -> None:
    b = broker(4)
    sub = b.subscribe()
    thread = threading.Thread(target=publish, args=(b, "t", 1))
    thread.start()
    thread.join()
    event = await asyncio.wait_for(sub.receive(), 5)
    assert event.delta == (0, 1)


@settings(max_examples=200, deadline=None)
@given(
    buffer_size=st.integers(1, 4),
    steps=st.lists(st.one_of(st.sampled_from("abc"), st.just("take")), max_size=120),
)
def test_a_consumer_applying_deltas_ends_on_every_keys_newest_version(
    buffer_size: int, steps: list[str]
) -> None:
    b = broker(buffer_size)
    sub = b.subscribe()
    versions: dict[str, int] = {}
    held: dict[str, int] = {}

    def take() -> None:
        event = sub.receive_nowait()
        key, version = event.payload
        assert event.delta is not None, "every delta here chains, so none is dropped"
        base, new = event.delta
        assert held.get(key, 0) == base, f"{key}: holds {held.get(key, 0)}, delta from {base}"
        held[key] = new
        assert new == version

    for step in steps:
        if step == "take":
            if sub.pending:
                take()
            continue
        versions[step] = versions.get(step, 0) + 1
        publish(b, step, versions[step])
    while sub.pending:
        take()
    assert held == versions
    assert sub.lost == 0
