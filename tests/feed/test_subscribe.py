"""Resumable subscriptions, in one process, on SQLite and PostgreSQL: replay from a revision then
live, list-then-watch, the per-session filter, resume from ``Subscription.revision``, and a slow or
overflowing subscriber that ends on the database's state. Cross-process delivery is in
``tests/feed/test_across_processes.py``."""

from __future__ import annotations

import asyncio
import gc
import logging
import random

import pytest

from messagestore import (
    FeedSubscription,
    FinishReason,
    Message,
    Role,
    Store,
    Text,
    open_store,
)
from messagestore._store import StoreOptions, open_store_with
from messagestore.testing import feed_counter
from pubsub import Event, EventType, SubscriptionEnded
from tests.support.feed_helpers import WAIT, Ledger, check_ledger, database_truth, follow, stream

CREATED, UPDATED, DELETED = EventType.CREATED, EventType.UPDATED, EventType.DELETED


async def _counter(store: Store) -> int:
    newest, _ = await feed_counter(store)
    return newest


async def test_since_none_delivers_only_what_commits_after_subscribe(store: Store) -> None:
    session = await store.sessions.create("now")
    before = await store.messages.create(session.id, role=Role.USER, parts=[Text("old")])
    sub = store.messages.subscribe()
    after = await store.messages.create(session.id, role=Role.USER, parts=[Text("new")])
    async with asyncio.timeout(WAIT):
        event = await sub.receive()
    assert (event.type, event.payload.id, event.payload.revision) == (
        CREATED,
        after.id,
        after.revision,
    )
    assert before.revision < after.revision
    assert sub.revision == after.revision + 1  # idle: the session's count change is past too
    sub.close()


async def test_replay_delivers_each_newest_state_then_continues_live(store: Store) -> None:
    session = await store.sessions.create("replay")
    kept = await store.messages.create(session.id, role=Role.USER, parts=[Text("v1")])
    since = await _counter(store)

    kept.parts = [Text("v2")]
    await store.messages.update(kept)
    reply = await store.messages.create(session.id, role=Role.ASSISTANT, model="m")
    for token in ("a", "b", "c"):
        reply.append_text(token)
        await store.messages.update(reply)
    reply.add_finish(FinishReason.END_TURN)
    await store.messages.update(reply)
    gone = await store.messages.create(session.id, role=Role.TOOL, parts=[Text("secret")])
    await store.messages.delete(gone.id)
    await store.messages.flush_all()

    sub = store.messages.subscribe(since=since)
    async with asyncio.timeout(WAIT):
        replayed = [await sub.receive() for _ in range(3)]
    by_id = {e.payload.id: e for e in replayed}
    assert [e.payload.revision for e in replayed] == sorted(e.payload.revision for e in replayed)
    assert by_id[kept.id].type is UPDATED and by_id[kept.id].payload.text == "v2"
    assert by_id[reply.id].type is CREATED  # created after `since`: one event, newest state
    assert by_id[reply.id].payload.text == "abc" and by_id[reply.id].payload.is_finished
    tombstone = by_id[gone.id]
    assert tombstone.type is DELETED
    assert (tombstone.payload.session_id, tombstone.payload.role) == (session.id, Role.TOOL)
    assert tombstone.payload.parts == []  # a replayed DELETED carries no content
    for event in replayed:
        if event.type is not DELETED:
            assert event.payload.revision == (await store.messages.get(event.payload.id)).revision
    assert sub.revision == await _counter(store)  # idle and caught up

    live = await store.messages.create(session.id, role=Role.USER)
    async with asyncio.timeout(WAIT):
        event = await sub.receive()
    assert (event.type, event.payload.id, event.payload.revision) == (
        CREATED,
        live.id,
        live.revision,
    )
    assert sub.pending == 0
    sub.close()


async def test_list_then_watch_converges_on_the_database(store: Store) -> None:
    """A snapshot taken while another task streams, then ``subscribe(since=snap.revision)``:
    applying the events to the listed messages gives exactly what is stored at the end."""
    session = await store.sessions.create("list then watch")
    rng = random.Random(7)
    writer = asyncio.create_task(
        stream(store, session.id, messages=6, deltas=15, rng=rng, delete_every=3)
    )
    await asyncio.sleep(0.05)  # part-way through the stream
    snap = await store.messages.snapshot(session.id)
    view = {m.id: m for m in snap.messages}
    assert all(m.revision <= snap.revision for m in snap.messages)
    sub = store.messages.subscribe(session_id=session.id, since=snap.revision)
    ids = await writer
    final = await store.messages.create(session.id, role=Role.USER, parts=[Text("end")])
    ledger = Ledger()
    await follow(sub, ledger, until=final.revision)
    for event in ledger.received:
        if event.type is DELETED:
            view.pop(event.message_id, None)
        else:
            view[event.message_id] = ledger.last[event.message_id]
    stored = await store.messages.list(session.id)
    assert {m.id: m for m in stored} == view
    assert {m.id: m.revision for m in stored} == {i: m.revision for i, m in view.items()}
    assert set(ids) - set(view)  # some were deleted: the watch saw that too
    sub.close()


async def test_session_filter_replays_and_delivers_one_session_only(store: Store) -> None:
    mine = await store.sessions.create("mine")
    other = await store.sessions.create("other")
    gone = await store.messages.create(mine.id, role=Role.USER)
    await store.messages.delete(gone.id)
    await store.messages.create(other.id, role=Role.USER)
    kept = await store.messages.create(mine.id, role=Role.USER)
    sub = store.messages.subscribe(session_id=mine.id, since=0)
    for target in (other.id, mine.id, other.id):
        await store.messages.create(target, role=Role.ASSISTANT)
    await store.sessions.delete(mine.id)  # every message of it: DELETED
    marker = await store.messages.create(other.id, role=Role.USER)
    ledger = Ledger()
    truth = await database_truth(store.url, mine.id)
    last = max(truth.deleted.values())
    await follow(sub, ledger, until=last)
    assert {m.session_id for m in ledger.last.values()} == {mine.id}
    assert kept.id in ledger.last and gone.id in ledger.last
    check_ledger(ledger.received, truth)
    assert marker.revision > last
    sub.close()


async def test_sessions_subscription_replays_saves_and_deletions(store: Store) -> None:
    since = await _counter(store)
    edited = await store.sessions.create("draft")
    edited.title = "final"
    await store.sessions.save(edited)
    removed = await store.sessions.create("short-lived")
    await store.sessions.delete(removed.id)
    sub = store.sessions.subscribe(since=since)
    async with asyncio.timeout(WAIT):
        first, second = await sub.receive(), await sub.receive()
    assert (first.type, first.payload.id, first.payload.title) == (CREATED, edited.id, "final")
    assert first.payload.revision == (await store.sessions.get(edited.id)).revision
    assert (second.type, second.payload.id) == (DELETED, removed.id)
    live = await store.sessions.create("live")
    async with asyncio.timeout(WAIT):
        third = await sub.receive()
    assert (third.type, third.payload.id, third.payload.revision) == (
        CREATED,
        live.id,
        live.revision,
    )
    sub.close()


async def test_resume_from_revision_misses_nothing_and_repeats_nothing(store: Store) -> None:
    """Subscriptions closed at random points while a writer streams; each next one resumes
    from the previous one's ``revision``. Together they received every final state once."""
    session = await store.sessions.create("resume")
    rng = random.Random(11)
    writer = asyncio.create_task(
        stream(store, session.id, messages=8, deltas=12, rng=rng, delete_every=4)
    )
    ledger = Ledger()
    since = 0
    resumes = 0
    while not writer.done():
        sub = store.messages.subscribe(since=since)
        for _ in range(rng.randrange(1, 12)):
            try:  # a cancelled receive loses nothing: the next subscription resumes anyway
                event = await asyncio.wait_for(sub.receive(), 0.5)
            except TimeoutError:
                break
            ledger.add(event.type, event.payload)
        assert sub.revision is not None
        since = sub.revision
        sub.close()
        resumes += 1
    await writer
    end = await store.messages.create(session.id, role=Role.USER)
    sub = store.messages.subscribe(since=since)
    await follow(sub, ledger, until=end.revision)
    sub.close()
    assert resumes > 2
    check_ledger(ledger.received, await database_truth(store.url))


async def test_revision_is_none_until_known_then_follows_the_feed(store: Store) -> None:
    session = await store.sessions.create("revision")
    sub = store.messages.subscribe(since=None)
    assert sub.revision is None  # the feed has not read the counter yet
    await store.messages.create(session.id, role=Role.USER)
    async with asyncio.timeout(WAIT):
        await sub.receive()
    session.title = "renamed"  # a change out of the subscription's scope
    saved = await store.sessions.save(session)
    assert sub.revision == saved.revision == await _counter(store)
    sub.close()


@pytest.mark.parametrize("since", [-1, "3", 2.0, True])
async def test_bad_since_is_refused(store: Store, since: object) -> None:
    error = ValueError if since == -1 else TypeError
    with pytest.raises(error, match="since"):
        store.messages.subscribe(since=since)  # type: ignore[arg-type]
    with pytest.raises(error, match="since"):
        store.sessions.subscribe(since=since)  # type: ignore[arg-type]


# -- falling behind ---------------------------------------------------------------------------


async def test_slow_subscriber_with_buffer_of_two_ends_on_the_database_state(
    db_url: str,
) -> None:
    """A UI with room for 2 events that sleeps between reads, three runs: it ends on the stored
    state of every message (finishes included), never on an older one."""
    async with open_store_with(db_url, StoreOptions(debounce=0.01)) as store:
        for run in range(3):
            session = await store.sessions.create(f"slow {run}")
            sub = store.messages.subscribe(buffer_size=2, session_id=session.id)
            rng = random.Random(run)
            writers = [
                stream(store, session.id, messages=3, deltas=20, rng=rng, delete_every=3)
                for _ in range(3)
            ]
            await asyncio.gather(*writers)
            end = await store.messages.create(session.id, role=Role.USER, parts=[Text("end")])
            ledger = Ledger()
            await follow(sub, ledger, until=end.revision, delay=0.003)
            sub.close()
            truth = await database_truth(db_url, session.id)
            check_ledger(ledger.received, truth)
            for message in await store.messages.list(session.id):
                assert ledger.last[message.id] == message  # the content, not only the revision
                if message.role is Role.ASSISTANT:
                    assert ledger.last[message.id].is_finished
        stats = store.messages.stats().broker
        assert stats.conflated + stats.dropped + stats.must_deliver_dropped > 0  # it fell behind


@pytest.mark.parametrize("feed_running", [False, True], ids=["first", "joining"])
async def test_overflow_for_good_is_repaired_from_the_database(
    db_url: str, feed_running: bool
) -> None:
    """More events than a stuck subscription can hold even in its overflow, before it received
    anything: the broker loses some for good (counted), and the subscription replays from
    where it started: every message's DELETED arrives exactly once. ``first``: the first
    subscription of the store (the feed starts with it); ``joining``: the feed already runs."""
    async with open_store(db_url) as store:
        session = await store.sessions.create("flood")
        await asyncio.gather(
            *(store.messages.create(session.id, role=Role.USER) for _ in range(1100))
        )
        if feed_running:
            other = store.messages.subscribe()
            aside = await store.sessions.create("aside")
            await store.messages.create(aside.id, role=Role.USER)
            async with asyncio.timeout(WAIT):
                await other.receive()  # published: the feed has read the counter
        sub = store.messages.subscribe(buffer_size=2, session_id=session.id, since=None)
        broker = store.messages.stats().broker
        before = broker.must_deliver_dropped + broker.dropped
        await store.messages.delete_session_messages(session.id)  # 1,100 DELETED in one commit
        broker = store.messages.stats().broker
        lost = broker.must_deliver_dropped + broker.dropped - before
        assert lost > 0  # the counters count every overflow
        truth = await database_truth(db_url, session.id)
        ledger = Ledger()
        await follow(sub, ledger, until=max(truth.deleted.values()))
        assert len(ledger.received) == 1100
        check_ledger(ledger.received, truth)
        sub.close()


async def test_cancelled_receive_loses_nothing_across_replay_pages(db_url: str) -> None:
    """A replay longer than a page, then live events, read by a receiver whose receives are
    cancelled (two in three, after 0 to 4 loop turns: while reading a page, while waiting for
    a live event): every change still arrives exactly once."""
    async with open_store(db_url) as store:
        session = await store.sessions.create("pages")
        await asyncio.gather(
            *(store.messages.create(session.id, role=Role.USER) for _ in range(700))
        )
        sub = store.messages.subscribe(session_id=session.id, since=0)

        async def more() -> None:
            for _ in range(50):
                await store.messages.create(session.id, role=Role.USER)

        writer = asyncio.create_task(more())
        ledger = Ledger()
        steps = cancelled = 0
        async with asyncio.timeout(WAIT):
            while len(ledger.received) < 750:
                task = asyncio.ensure_future(sub.receive())
                steps += 1
                if steps % 3:
                    for _ in range(steps % 5):
                        await asyncio.sleep(0)
                    task.cancel()
                await asyncio.wait([task])
                if task.cancelled():
                    cancelled += 1
                    continue
                event = task.result()
                ledger.add(event.type, event.payload)
        await writer
        check_ledger(ledger.received, await database_truth(db_url, session.id))
        assert cancelled > 100
        sub.close()


# -- closing ----------------------------------------------------------------------------------


async def test_closing_the_store_ends_every_subscription(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscriptions that never read, or are in the middle of a replay of several pages, end
    (as the broker's do) when the store closes; their ``revision`` still claims only what
    they delivered."""
    monkeypatch.setattr("messagestore._feed._subscription._PAGE", 2)
    store = await open_store(db_url)
    session = await store.sessions.create("closing")
    for _ in range(5):
        await store.messages.create(session.id, role=Role.USER)
    unread = store.messages.subscribe(since=0)
    replaying = store.messages.subscribe(since=0, buffer_size=1)
    live = store.messages.subscribe()
    async with asyncio.timeout(WAIT):
        first = await replaying.receive()  # page 1 of 3
    await store.close()
    for sub in (unread, replaying, live):
        async with asyncio.timeout(WAIT):
            rest = [event async for event in sub]
        assert len(rest) <= 1  # at most the rest of the page read before the close
        with pytest.raises(SubscriptionEnded):
            await sub.receive()
    assert unread.revision == 0
    assert replaying.revision is not None
    assert first.payload.revision <= replaying.revision < (await _counter_after(db_url))


async def test_a_receive_waiting_for_the_first_read_ends_when_the_store_closes(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store closes while a new subscription's first ``receive()`` waits for the feed to
    start: the iteration ends (it is neither cancelled nor an error), and nothing is left
    failing unseen (on PostgreSQL the close lands in the LISTEN connection's handshake)."""

    async def drain(sub: FeedSubscription[Message]) -> list[Event[Message]]:
        return [event async for event in sub]

    for _ in range(3):
        store = await open_store(db_url)
        await store.messages.create((await store.sessions.create("x")).id, role=Role.USER)
        waiting = asyncio.create_task(drain(store.messages.subscribe(since=0)))
        await asyncio.sleep(0)  # it is waiting now
        await store.close()
        async with asyncio.timeout(WAIT):
            await asyncio.wait([waiting])
        assert not waiting.cancelled()
        assert waiting.exception() is None
        assert len(waiting.result()) <= 1
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


async def _counter_after(url: str) -> int:
    return (await database_truth(url)).counter


# -- local and foreign commits ------------------------------------------------------------------


@pytest.mark.parametrize("buffer_size", [None, 2], ids=["default", "buffer-2"])
async def test_local_and_foreign_commits_arrive_merged_in_revision_order(
    db_url: str, buffer_size: int | None
) -> None:
    """Two stores stream into one session at once; a subscriber of the first one gets its own
    commits and the second store's (which it learns of from the database only) merged: one
    strictly increasing sequence of revisions, every final state, nothing twice."""
    async with open_store(db_url) as here, open_store(db_url) as elsewhere:
        session = await here.sessions.create("merged")
        sub = here.messages.subscribe(session_id=session.id, buffer_size=buffer_size)
        rng = random.Random(3)
        local, foreign = await asyncio.gather(
            stream(here, session.id, messages=5, deltas=15, rng=rng, delete_every=3),
            stream(elsewhere, session.id, messages=5, deltas=15, rng=rng, delete_every=3),
        )
        end = await elsewhere.messages.create(session.id, role=Role.USER)  # foreign, last
        ledger = Ledger()
        await follow(sub, ledger, until=end.revision, delay=0.002 if buffer_size else 0.0)
        sub.close()
        revisions = [r.revision for r in ledger.received]
        assert revisions == sorted(set(revisions))
        check_ledger(ledger.received, await database_truth(db_url, session.id))
        assert set(local) | set(foreign) <= set(ledger.last)
