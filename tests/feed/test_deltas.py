"""Feed events carry deltas: each ``UPDATED`` event of a message says what changed since the
message's previous event, and what a subscriber receives always chains.

The rule checked by every subscriber here, fast or slow (conflated): a delta that arrives for
a message the subscriber holds a copy of applies to that copy (its base is the copy's
revision), and applying it gives exactly the event's payload. At the end every view equals
the database, field by field.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from messagestore import FeedSubscription, Message, MessageDelta, Role, Store, Text, open_store
from pubsub import EventType
from tests.support.feed_helpers import WAIT, stream
from tests.support.wire import fields


@dataclass
class View:
    """A UI's copy of every message, kept by applying deltas where it can."""

    messages: dict[str, Message] = field(default_factory=dict)
    applied: int = 0
    whole: int = 0
    missed: int = 0  # updates of a message held here that came whole

    def take(self, event_type: EventType, payload: Message, delta: MessageDelta | None) -> None:
        if event_type is EventType.DELETED:
            self.messages.pop(payload.id, None)
            return
        copy = self.messages.get(payload.id)
        if delta is not None and copy is not None:
            assert delta.base == copy.revision, (
                f"{payload.id}: a delta from revision {delta.base} for a copy at {copy.revision}"
            )
            applied = delta.apply(copy)
            assert fields(applied) == fields(payload)
            self.messages[payload.id] = applied
            self.applied += 1
            return
        self.messages[payload.id] = payload.clone()
        self.whole += 1
        if copy is not None and not copy.is_finished:
            self.missed += 1


async def watch(sub: FeedSubscription[Message], view: View, until: int, delay: float) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            event = await sub.receive()
            view.take(event.type, event.payload, event.delta)
            if event.payload.revision >= until:
                return
            if delay:
                await asyncio.sleep(delay)


async def newest_revision(store: Store, session_id: str) -> int:
    return (await store.messages.snapshot(session_id)).revision


async def check_views(store: Store, session_id: str, views: list[View]) -> None:
    stored = {m.id: fields(m) for m in await store.messages.list(session_id)}
    for view in views:
        assert {i: fields(m) for i, m in view.messages.items()} == stored


async def test_fast_and_slow_subscribers_apply_every_delta_they_get(db_url: str) -> None:
    async with open_store(db_url, debounce=0.005) as store:
        session = await store.sessions.create("deltas")
        subs = [
            store.messages.subscribe(session_id=session.id),
            store.messages.subscribe(session_id=session.id, buffer_size=2),
            store.messages.subscribe(session_id=session.id, buffer_size=1),
        ]
        views = [View(), View(), View()]
        await stream(store, session.id, messages=6, deltas=40, rng=random.Random(7), delete_every=4)
        await store.messages.flush_all()
        until = await newest_revision(store, session.id)
        await asyncio.gather(
            *(
                watch(sub, view, until, delay)
                for sub, view, delay in zip(subs, views, (0.0, 0.002, 0.0), strict=True)
            )
        )
        await check_views(store, session.id, views)
        fast = views[0]
        assert fast.applied > fast.whole, (fast.applied, fast.whole)
        assert fast.missed == 0
        for sub in subs:
            sub.close()


async def test_a_slow_subscriber_gets_one_merged_delta_for_what_it_missed(db_url: str) -> None:
    async with open_store(db_url, debounce=0) as store:
        session = await store.sessions.create("merged")
        sub = store.messages.subscribe(session_id=session.id, buffer_size=1)
        view = View()
        message = await store.messages.create(
            session.id, role=Role.ASSISTANT, parts=[Text("Counting: ")]
        )
        event = await asyncio.wait_for(sub.receive(), WAIT)
        view.take(event.type, event.payload, event.delta)
        for word in ("one ", "two ", "three ", "four "):
            message.append_text(word)
            await store.messages.update(message)  # each written at once: four states
        event = await asyncio.wait_for(sub.receive(), WAIT)
        assert event.payload.text == "Counting: one two three four "
        assert event.delta is not None
        assert dict(event.delta.append) == {0: "one two three four "}
        assert event.delta.base == message.revision  # the created state: update() copies
        view.take(event.type, event.payload, event.delta)
        assert view.applied == 1
        sub.close()


async def test_changes_committed_by_another_store_carry_deltas(db_url: str) -> None:
    async with open_store(db_url) as reader, open_store(db_url, debounce=0.005) as writer:
        session = await writer.sessions.create("elsewhere")
        sub = reader.messages.subscribe(session_id=session.id)
        view = View()
        await stream(writer, session.id, messages=3, deltas=30, rng=random.Random(3))
        await writer.messages.flush_all()
        await watch(sub, view, await newest_revision(writer, session.id), 0.0)
        await check_views(writer, session.id, [view])
        # The reader reads other processes' commits in pages (the newest state of each
        # message), so it publishes fewer states than were written; each carries a delta.
        assert view.applied > 0
        assert view.missed == 0
        sub.close()


async def test_without_subscribers_nothing_is_remembered(sqlite_url: str) -> None:
    async with open_store(sqlite_url, debounce=0) as store:
        session = await store.sessions.create("quiet")
        message = await store.messages.create(session.id, role=Role.ASSISTANT)
        message.append_text("before anyone listens")
        await store.messages.update(message)
        sub = store.messages.subscribe(session_id=session.id)
        message.append_text(", and after")
        await store.messages.update(message)
        event = await asyncio.wait_for(sub.receive(), WAIT)
        # The previous state was published to nobody, so it was not kept: the first event a
        # new subscriber gets is whole.
        assert event.delta is None
        message.append_text("!")
        await store.messages.update(message)
        event = await asyncio.wait_for(sub.receive(), WAIT)
        assert event.delta is not None and dict(event.delta.append) == {0: "!"}
        sub.close()
