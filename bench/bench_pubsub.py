"""Benchmark of ``pubsub.Broker.publish`` (a script that prints figures, not a timed test).

Run from the repository root::

    python -m bench.bench_pubsub

What it measures: the wall-clock cost of one lossy ``publish`` call fanned out to 1, 10 and 100
subscribers, reported per event and per (event x subscriber), as the median over several
repeats. Subscribers do not drain concurrently: their buffers (``BATCH`` slots) are large enough
for one timed batch of ``BATCH`` publishes, so every publish takes the plain append path and
nothing is dropped; the buffers are drained, untimed, between batches, which keeps the number
of live events (and so the garbage collector's work, left enabled) at a realistic level.

Extra rows time the slow-subscriber paths on one full subscriber: a lossy drop (no key
function), and a supersession with a key function, where the superseded entry is the oldest
queued one (keys taking turns, ``n % 1024``) or the newest (one key streaming). The topic row
publishes to 100 subscribers of 100 different topics: each event reaches one of them, so it
should cost about what one subscriber costs, not what 100 do.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from pubsub import Broker, EventType, Subscription

REPEATS = 7
BATCH = 1024
DELIVERIES_PER_REPEAT = 200_000
UPDATED = EventType.UPDATED


def drain(subs: list[Subscription[int]]) -> None:
    for sub in subs:
        while sub.queued:
            sub.receive_nowait()


def timed_batch(publish: Callable[[EventType, int], None], events: int) -> int:
    start = time.perf_counter_ns()
    for n in range(events):
        publish(UPDATED, n)
    return time.perf_counter_ns() - start


def median_ns_per_event(broker: Broker[int], subs: list[Subscription[int]], events: int) -> float:
    samples = []
    for _ in range(REPEATS):
        elapsed = 0
        for _ in range(events // BATCH):
            drain(subs)
            elapsed += timed_batch(broker.publish, BATCH)
        samples.append(elapsed / (events // BATCH * BATCH))
    return statistics.median(samples)


def fan_out_row(subscribers: int) -> tuple[str, float, float]:
    broker: Broker[int] = Broker(buffer_size=BATCH)
    subs = [broker.subscribe() for _ in range(subscribers)]
    per_event = median_ns_per_event(broker, subs, max(BATCH, DELIVERIES_PER_REPEAT // subscribers))
    assert broker.drop_count == 0
    return f"append, {subscribers} subscriber(s)", per_event, per_event / subscribers


def full_subscriber_row(
    label: str, broker: Broker[int], keys: int = BATCH
) -> tuple[str, float, float]:
    sub = broker.subscribe(buffer_size=BATCH)
    for n in range(BATCH):
        broker.publish(UPDATED, n % keys)  # full; with a key, every later n % keys is queued
    samples = [
        timed_batch(lambda kind, n: broker.publish(kind, n % keys), DELIVERIES_PER_REPEAT)
        / DELIVERIES_PER_REPEAT
        for _ in range(REPEATS)
    ]
    assert sub.queued == BATCH
    return label, statistics.median(samples), statistics.median(samples)


def topic_row(subscribers: int) -> tuple[str, float, float]:
    broker: Broker[int] = Broker(buffer_size=BATCH, topic=lambda payload: payload % subscribers)
    subs = [broker.subscribe(topic=topic) for topic in range(subscribers)]
    per_event = median_ns_per_event(broker, subs, DELIVERIES_PER_REPEAT)
    assert broker.drop_count == 0
    assert broker.stats().delivered == broker.stats().published
    return f"topic, 1 of {subscribers} subscribers *", per_event, per_event


def main() -> None:
    rows = [fan_out_row(n) for n in (1, 10, 100)]
    rows.append(full_subscriber_row("drop, 1 full subscriber *", Broker()))
    keyed: Broker[int] = Broker(key=lambda payload: payload)
    rows.append(full_subscriber_row("conflate, 1 full subscriber *", keyed))
    one_key: Broker[int] = Broker(key=lambda payload: payload)
    rows.append(full_subscriber_row("conflate, one key streaming *", one_key, keys=1))
    rows.append(topic_row(100))
    print(f"pubsub.Broker.publish - Python {sys.version.split()[0]}, median of {REPEATS} repeats")
    print(f"subscribers not draining concurrently; buffers of {BATCH} drained between batches")
    print(f"{'case':<32}{'ns/event':>12}{'ns/event/subscriber':>22}")
    for label, per_event, per_subscriber in rows:
        print(f"{label:<32}{per_event:>12.0f}{per_subscriber:>22.0f}")
    print("* includes a lambda (a wrapper, or the topic function) and a modulo per call (~100 ns)")


if __name__ == "__main__":
    main()
