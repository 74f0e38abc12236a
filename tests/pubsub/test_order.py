"""Order, conflation, loss and counters under random interleavings (a hypothesis property).

Each example runs one scenario on a fresh event loop: lossy publishes, must-deliver publishes
(``enqueue_must_deliver`` futures and ``publish_must_deliver`` tasks), cancellations, partial
reads by slow consumers with tiny buffers, and deadlines. Time is the loop's clock, shifted by
hand past ``must_deliver_timeout`` ("expire"), so which waits time out is decided by the ops,
never by the machine's speed. At the end every wait is over and every subscription drains;
then the documented contract is checked per subscription:

* it received a subsequence of the publish sequence (restricted to its topic), in order;
* unless ``lost > 0``, its last event of every key is the last one published for that key;
* no ``CREATED``/``DELETED`` and no must-deliver event that was never late disappears
  without being counted in ``lost``;
* the counters add up: ``delivered + conflated + dropped + must_deliver_dropped`` equals the
  (event, subscription) pairs reached, and the ``dropped`` signal fired once per drop.

Besides, the broker is stepped alongside a naive reference model (``ModelQueue``: one list per
subscription, written from the broker's contract, docs/MODULES.md, with linear scans), and
everything observable must match it exactly after every step: ``queued``, ``pending``,
``waiting_senders``, ``lost``, and at the end each received sequence and every counter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pubsub import Broker, Event, EventType, Subscription, dropped

Payload = tuple[str, int]  # (key, version); the version is the publish index, so unique
TOPIC_OF = {"a": "t1", "b": "t1", "c": "t2"}
TIMEOUT = 1000.0  # loop-clock seconds: only an "expire" op ever reaches it


@dataclass
class Published:
    event: Event[Payload]
    must_deliver: bool


@dataclass
class Reader:
    sub: Subscription[Payload]
    received: list[Event[Payload]] = field(default_factory=list)

    def read(self, count: int) -> None:
        while count and self.sub.queued:
            self.received.append(self.sub.receive_nowait())
            count -= 1

    def drain(self) -> None:
        while self.sub.queued:
            self.received.append(self.sub.receive_nowait())
        assert self.sub.pending == 0

    def reaches(self, event: Event[Payload]) -> bool:
        topic = self.sub.topic
        return topic is None or TOPIC_OF[event.payload[0]] == topic


# Ops are (name, arg, arg2). Publishes dominate (mostly UPDATED, as in a stream) so that tiny
# buffers fill and conflation, overflow and late must-deliver events are exercised often.
kinds = st.sampled_from([EventType.UPDATED] * 4 + [EventType.CREATED, EventType.DELETED])
keys = st.sampled_from(sorted(TOPIC_OF))
ops = st.one_of(
    st.tuples(st.sampled_from(["publish"] * 5 + ["must"] * 2 + ["must_task"]), kinds, keys),
    st.tuples(st.just("cancel"), st.integers(0, 5), st.just("")),
    st.tuples(st.just("read"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.sampled_from(["expire", "turn"]), st.just(0), st.just("")),
)
subscriptions = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([None, None, "t1", "t2"])),
    min_size=1,
    max_size=3,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    use_key=st.booleans(),
    use_topic=st.booleans(),
    subs=subscriptions,
    script=st.lists(ops, min_size=30, max_size=150),
)
def test_random_interleavings_keep_the_contract(
    use_key: bool,
    use_topic: bool,
    subs: list[tuple[int, str | None]],
    script: list[tuple[str, Any, Any]],
) -> None:
    asyncio.run(run_scenario(use_key, use_topic, subs, script))


async def run_scenario(
    use_key: bool,
    use_topic: bool,
    subs: list[tuple[int, str | None]],
    script: list[tuple[str, Any, Any]],
) -> None:
    loop = asyncio.get_running_loop()
    real_time = loop.time
    shift = 0.0

    def shifted_time() -> float:
        return real_time() + shift

    loop.time = shifted_time  # type: ignore[method-assign]
    broker: Broker[Payload] = Broker(
        must_deliver_timeout=TIMEOUT,
        key=(lambda p: p[0]) if use_key else None,
        topic=(lambda p: TOPIC_OF[p[0]]) if use_topic else None,
    )
    readers = [
        Reader(broker.subscribe(buffer_size=size, topic=topic if use_topic else None))
        for size, topic in subs
    ]
    counts: Counter[str] = Counter()
    models = [ModelQueue(size, use_key, counts) for size, _ in subs]
    published: list[Published] = []
    waits: list[tuple[asyncio.Future[None], int]] = []
    signals: Counter[tuple[str, int]] = Counter()

    def on_drop(sender: Any, *, event: Event[Payload], path: str) -> None:
        signals[path, event.payload[1]] += 1

    async def let_every_wait_end() -> None:
        nonlocal shift
        shift += 2 * TIMEOUT
        if waits:
            async with asyncio.timeout(5):
                await asyncio.wait([wait for wait, _ in waits])
        for model in models:
            for entry in model.queue:
                model.late(entry.seq)

    with dropped.connected_to(on_drop, sender=broker):
        for op, arg, name in script:
            if op in ("publish", "must", "must_task"):
                seq = len(published)
                event = Event(arg, (name, seq))
                published.append(Published(event, op != "publish"))
                if op == "publish":
                    broker.publish(arg, event.payload)
                elif op == "must":
                    waits.append((broker.enqueue_must_deliver(arg, event.payload), seq))
                else:
                    task = asyncio.create_task(broker.publish_must_deliver(arg, event.payload))
                    waits.append((task, seq))
                    await asyncio.sleep(0)  # the task starts: its event is queued now
                for reader, model in zip(readers, models, strict=True):
                    if reader.reaches(event):
                        (model.lossy if op == "publish" else model.must_deliver)(seq, event)
            elif op == "cancel" and waits:
                wait, seq = waits[-1 - arg % len(waits)]
                wait.cancel()
                await asyncio.sleep(0)  # the wait's done-callback ends it everywhere
                for model in models:
                    model.late(seq)
            elif op == "read":
                readers[arg % len(readers)].read(name)
                models[arg % len(readers)].take(name)
            elif op == "expire":
                await let_every_wait_end()
            elif op == "turn":
                await asyncio.sleep(0)
            for reader, model in zip(readers, models, strict=True):
                sub = reader.sub
                observed = (sub.queued, sub.pending, sub.waiting_senders, sub.lost)
                assert observed == model.observed(), f"after {op}: {observed} != model"
        await let_every_wait_end()
        for reader, model in zip(readers, models, strict=True):
            reader.drain()
            model.take(10_000)
            assert reader.received == model.received
            assert reader.sub.lost == model.lost

    stats = broker.stats()
    assert counts == Counter(
        delivered=stats.delivered,
        conflated=stats.conflated,
        dropped=stats.dropped,
        must_deliver_dropped=stats.must_deliver_dropped,
    )
    fan_outs = sum(reader.reaches(p.event) for p in published for reader in readers)
    assert stats.published == len(published)
    assert stats.delivered + stats.conflated + stats.dropped + stats.must_deliver_dropped == (
        fan_outs
    )
    assert stats.dropped == sum(n for (path, _), n in signals.items() if path == "lossy")
    assert stats.must_deliver_dropped == sum(
        n for (path, _), n in signals.items() if path == "must_deliver"
    )
    total_lost = sum(reader.sub.lost for reader in readers)
    assert stats.dropped <= total_lost <= stats.dropped + stats.must_deliver_dropped
    if not use_key:
        assert stats.conflated == 0
    if len(readers) == 1 and stats.must_deliver_dropped == 0:
        assert len(readers[0].received) == stats.delivered
    late = {version for (path, version) in signals if path == "must_deliver"}
    for reader in readers:
        check_one_subscription(reader, published, late)


def check_one_subscription(reader: Reader, published: list[Published], late: set[int]) -> None:
    reached = [p for p in published if reader.reaches(p.event)]
    versions = [event.payload[1] for event in reader.received]
    assert versions == sorted(set(versions)), "not a subsequence in publish order"
    assert all(reader.reaches(event) for event in reader.received), "another topic's event"
    assert all(event == published[event.payload[1]].event for event in reader.received)

    lost = reader.sub.lost
    received = set(versions)
    if lost == 0:
        for name in TOPIC_OF:
            of_key = [p.event for p in reached if p.event.payload[0] == name]
            mine = [e for e in reader.received if e.payload[0] == name]
            if of_key:
                assert mine and mine[-1] == of_key[-1], f"{name} does not end on its newest state"

    protected_missing = [
        p
        for p in reached
        if p.event.payload[1] not in received
        and (
            p.event.type is not EventType.UPDATED
            or (p.must_deliver and p.event.payload[1] not in late)
        )
    ]
    assert len(protected_missing) <= lost, f"removed without being counted: {protected_missing}"


# --------------------------------------------------------------------- reference model


@dataclass
class Entry:
    seq: int
    event: Event[Payload]
    waiting: bool = False
    superseded: bool = False


@dataclass
class ModelQueue:
    """One subscription as the contract describes it: a list, admitted = its first entries."""

    capacity: int
    keyed: bool
    counts: Counter[str]
    queue: list[Entry] = field(default_factory=list)
    replaceable: dict[str, int] = field(default_factory=dict)  # key -> seq, if still queued
    lost: int = 0
    received: list[Event[Payload]] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return max(16 * self.capacity, 1024)

    def admit(self) -> None:
        for entry in self.queue[: self.capacity]:
            if entry.waiting:
                entry.waiting = False
                self.counts["conflated" if entry.superseded else "delivered"] += 1

    def supersede(self, key: str) -> bool:
        seq = self.replaceable.pop(key, None)
        for index, entry in enumerate(self.queue):
            if entry.seq == seq:
                del self.queue[index]
                self.admit()
                return True
        return False

    def lossy(self, seq: int, event: Event[Payload]) -> None:
        key, replaceable = event.payload[0], self.keyed and event.type is EventType.UPDATED
        if len(self.queue) < self.capacity:
            outcome = "delivered"
        elif self.keyed and self.supersede(key):
            outcome = "conflated"
        elif replaceable and len(self.queue) - self.capacity < self.limit:
            outcome = "delivered"
        else:
            self.lost += 1
            self.counts["dropped"] += 1
            return
        self.queue.append(Entry(seq, event))
        if replaceable:
            self.replaceable[key] = seq
        self.counts[outcome] += 1

    def must_deliver(self, seq: int, event: Event[Payload]) -> None:
        if len(self.queue) < self.capacity:
            self.queue.append(Entry(seq, event))
            self.counts["delivered"] += 1
            return
        superseded = self.keyed and self.supersede(event.payload[0])
        if len(self.queue) < self.capacity:
            self.queue.append(Entry(seq, event))
            self.counts["conflated"] += 1
        elif len(self.queue) - self.capacity >= self.limit:
            self.lost += 1
            self.counts["must_deliver_dropped"] += 1
        else:
            self.queue.append(Entry(seq, event, waiting=True, superseded=superseded))

    def late(self, seq: int) -> None:
        for entry in self.queue:
            if entry.seq == seq and entry.waiting:
                entry.waiting = False
                self.counts["must_deliver_dropped"] += 1
                key = entry.event.payload[0]
                if self.keyed and entry.event.type is EventType.UPDATED:
                    current = self.replaceable.get(key)
                    if current is None or current < seq:
                        self.replaceable[key] = seq

    def take(self, count: int) -> None:
        while count and self.queue:
            self.received.append(self.queue.pop(0).event)
            self.admit()
            count -= 1

    def observed(self) -> tuple[int, int, int, int]:
        """(queued, pending, waiting_senders, lost), as the Subscription reports them."""
        waiting = sum(entry.waiting for entry in self.queue)
        return min(len(self.queue), self.capacity), len(self.queue), waiting, self.lost
