"""Every wait in the change feed ends, on SQLite and PostgreSQL: a resume point from the future,
a feed that fell behind the retained history, a read that fails while local commits wait, a
subscription closed from another thread while another process writes.

The feed's own reads of other processes' changes are held (or failed) on purpose by a
``FeedReads`` wrapper around the store's repository, so each situation is reached by events,
not by timing: the feed is stopped exactly between two points while the test acts.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import messagestore.sync
from messagestore import (
    Message,
    MessageStoreError,
    RevisionCompacted,
    RevisionFromFuture,
    RevisionUnavailable,
    Role,
    Store,
    Text,
    open_store,
)
from messagestore._changes import Change, Kind
from messagestore._database._database import Revisions
from messagestore._database._read_states import ReadStates
from messagestore._database._repository import Repository
from messagestore._database._revisions import ChangePage
from messagestore._feed._feed import Feed
from messagestore.server import create_app
from messagestore.testing import feed_counter, prune_tombstones
from pubsub import EventType, SubscriptionEnded
from tests.cli.test_commands import assert_one_line_error, run_cli
from tests.support.feed_helpers import WAIT, Ledger, check_ledger, database_truth, follow
from tests.support.paths import ROOT
from tests.support.server_helpers import serving, sse_events

MAX_REVISION = 2**63 - 1


class FeedReads:
    """Wraps a repository's ``read_changes``: the feed's reads (every kind, no session) wait
    while ``held`` and raise while ``failing``; a subscription's reads (one kind) fail the
    next ``fail_replays`` times. ``waiting`` is set (from the loop) when a feed read is held.
    """

    def __init__(self, repository: Repository) -> None:
        self._read = repository.read_changes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = asyncio.Event()
        self.waiting = threading.Event()
        self.failing = False
        self.failures = 0
        self.fail_replays = 0
        repository.read_changes = self._gated  # type: ignore[method-assign]

    async def _gated(
        self,
        after: int,
        *,
        upto: int | None,
        limit: int,
        session_id: str | None = None,
        kinds: frozenset[Kind] = frozenset(Kind),
        states: ReadStates | None = None,
    ) -> ChangePage:
        self._loop = asyncio.get_running_loop()
        if kinds == frozenset(Kind):
            if not self._open.is_set():
                self.waiting.set()
                await self._open.wait()
            if self.failing:
                self.failures += 1
                raise OSError("injected: the feed's read failed")
        elif self.fail_replays:
            self.fail_replays -= 1
            raise OSError("injected: a replay read failed")
        return await self._read(
            after, upto=upto, limit=limit, session_id=session_id, kinds=kinds, states=states
        )

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        """Let the feed read (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._open.set()
        else:
            loop.call_soon_threadsafe(self._open.set)

    async def held(self) -> None:
        """Wait until a read of the feed is held."""
        assert await asyncio.to_thread(self.waiting.wait, WAIT), "the feed never read"


def spy_on_held_commits(repository: Repository, feed: Feed) -> threading.Event:
    """An event set once a local commit is held by the feed (it waits for a gap)."""
    held = threading.Event()

    def announce(changes: Sequence[Change], taken: Revisions) -> asyncio.Future[None] | None:
        wait = feed.announce(changes, taken)
        if feed._held:
            held.set()
        return wait

    repository.set_announce(announce)
    return held


async def _counter(store: Store) -> int:
    newest, _compacted = await feed_counter(store)
    return newest


async def _receive(sub: Any) -> Any:
    async with asyncio.timeout(WAIT):
        return await sub.receive()


# -- a resume point from the future ----------------------------------------------------------


async def test_since_above_the_newest_revision_raises_revision_from_future(store: Store) -> None:
    """``since`` above the counter is an error from ``receive()`` (not a silence until the
    counter passes it), raised again by every later receive; ``revision`` never claims it,
    not even once the database has passed it."""
    session = await store.sessions.create("future")
    await store.messages.create(session.id, role=Role.USER)
    newest = await _counter(store)
    since = newest + 1
    subs = [
        store.messages.subscribe(since=since),
        store.messages.subscribe(since=since, session_id=session.id),
        store.sessions.subscribe(since=since),
        store.messages.subscribe(since=MAX_REVISION),
    ]
    for sub in subs:
        assert sub.revision is None  # not reached: not claimed
        with pytest.raises(RevisionFromFuture) as raised:
            await _receive(sub)
        error = raised.value
        assert isinstance(error, RevisionUnavailable)
        assert isinstance(error, MessageStoreError)
        assert error.since in (since, MAX_REVISION)
        assert error.newest == newest
        assert "start again from a snapshot" in str(error)
        assert sub.revision is None
    # The database passes ``since``: the subscriptions stay failed and claim nothing.
    await store.messages.create(session.id, role=Role.USER, parts=[Text("later")])
    assert await _counter(store) >= since
    for sub in subs:
        with pytest.raises(RevisionFromFuture):
            await _receive(sub)
        assert sub.revision is None
        assert sub.closed  # its buffer is released: no writer waits for it
        sub.close()


async def test_a_reached_since_is_the_revision_at_once(store: Store) -> None:
    """A ``since`` this store knows the database reached is reported at once; one it does not
    know yet is reported after the first replay page read the counter."""
    session = await store.sessions.create("reached")
    message = await store.messages.create(session.id, role=Role.USER)
    snap = await store.messages.snapshot(session.id)
    for since in (0, message.revision, snap.revision):
        sub = store.messages.subscribe(since=since, session_id=session.id)
        assert sub.revision == since
        sub.close()
    async with open_store(store.url) as other:  # knows nothing of the database yet
        sub = other.messages.subscribe(since=snap.revision, session_id=session.id)
        assert sub.revision is None
        added = await store.messages.create(session.id, role=Role.USER)
        event = await _receive(sub)
        assert (event.type, event.payload.id) == (EventType.CREATED, added.id)
        assert sub.revision is not None and sub.revision >= added.revision
        sub.close()


@pytest.mark.parametrize(
    ("since", "error"),
    [
        (2**63, ValueError),
        (2**64, ValueError),
        (-1, ValueError),
        (True, TypeError),
        ("1", TypeError),
    ],
)
async def test_since_that_is_no_revision_is_refused_by_subscribe(
    store: Store, since: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="since"):
        store.messages.subscribe(since=since)  # type: ignore[arg-type]
    with pytest.raises(error, match="since"):
        store.sessions.subscribe(since=since)  # type: ignore[arg-type]


def test_sync_since_from_the_future_and_out_of_range(db_url: str) -> None:
    with messagestore.sync.open_store(db_url) as store:
        session = store.sessions.create("sync future")
        store.messages.create(session.id, role=Role.USER)
        with pytest.raises(ValueError, match="since"):
            store.messages.subscribe(since=2**63)
        with store.messages.subscribe(since=MAX_REVISION) as sub:
            for _ in range(2):
                with pytest.raises(RevisionFromFuture):
                    sub.get(timeout=WAIT)
            assert sub.revision is None
        left_open = store.sessions.subscribe(since=MAX_REVISION)
        with pytest.raises(RevisionFromFuture):
            left_open.get(timeout=WAIT)
    # Closing the store drained the failed subscription left open without raising.
    with pytest.raises(RevisionFromFuture):
        left_open.get(timeout=WAIT)  # the failure it already raised stays


async def test_http_resume_point_from_the_future_gets_a_reset(store: Store) -> None:
    """``Last-Event-ID: 100000`` on a younger database: no ``id: 100000``, an ``event: reset``
    with ``revision_from_future``, then the end of the stream. Revisions that do not fit 64
    bits are refused with 422, in ``since=`` and in ``Last-Event-ID``."""
    session = await store.sessions.create("web")
    await store.messages.create(session.id, role=Role.USER)
    app = create_app(store, keepalive=0.2)
    async with (
        serving(app) as server,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
    ):
        for url, headers in [
            (f"/api/events?session_id={session.id}", {"last-event-id": "100000"}),
            (f"/api/events?since={MAX_REVISION}", {}),
        ]:
            events = []
            ids = []
            async with asyncio.timeout(WAIT):
                async for reader, event in sse_events(client, url, headers):
                    ids.append(reader.last_event_id)
                    if event.comment is None:
                        events.append(event)
            assert [e.event for e in events] == ["reset"], events  # and the stream ended
            assert '"code":"revision_from_future"' in events[0].data.replace(" ", "")
            assert "newer than the database's newest revision" in events[0].data
            assert set(ids) == {None}  # the unreached revision was never sent as an id
        for url, headers in [
            (f"/api/events?since={MAX_REVISION + 1}", {}),
            ("/api/events", {"last-event-id": str(MAX_REVISION + 1)}),
            ("/api/events", {"last-event-id": str(2**64)}),
        ]:
            response = await client.get(url, headers=headers)
            assert response.status_code == 422, (url, headers, response.text)
            assert "2**63 - 1" in response.json()["error"]["message"]


async def test_watch_since_from_the_future_is_an_error(sqlite_url: str, tmp_path: Path) -> None:
    async with open_store(sqlite_url) as store:
        session = await store.sessions.create("watched")
        await store.messages.create(session.id, role=Role.USER)
    done = await asyncio.to_thread(
        run_cli, "watch", "--since", "100000", "--url", sqlite_url, cwd=tmp_path, timeout=WAIT
    )
    assert_one_line_error(done, "revision 100000 is newer than", "start again from a snapshot")


# -- a feed behind the retained history ----------------------------------------------------------


async def _prune_elsewhere(url: str) -> tuple[int, str]:
    """Another store commits a message and a deletion and prunes the tombstone: returns the
    compacted revision and the session it wrote."""
    async with open_store(url, feed_retention=timedelta(microseconds=1)) as other:
        session = await other.sessions.create("elsewhere")
        doomed = await other.messages.create(session.id, role=Role.USER)
        await other.messages.delete(doomed.id)
        assert await prune_tombstones(other) >= 1
        _newest, compacted = await feed_counter(other)
        assert compacted >= doomed.revision
        return compacted, session.id


async def test_a_feed_behind_the_compacted_revision_recovers(store: Store) -> None:
    """The feed had not read other stores' changes when they were compacted: it recovers at
    once. The held local commit is published (its writer returns), subscriptions whose resume
    point is older than the retained history raise ``RevisionCompacted`` (one waiting in
    ``receive()`` is woken), one whose resume point is retained goes on, and new subscriptions
    see other stores' changes again."""
    reads = FeedReads(store._repository)
    behind = store.messages.subscribe()
    sessions_behind = store.sessions.subscribe()
    await reads.held()  # the feed knows its horizon and is stopped before reading
    compacted, session_id = await _prune_elsewhere(store.url)
    retained = store.messages.subscribe(since=compacted)
    waiting = asyncio.create_task(behind.receive())
    await asyncio.sleep(0)  # it waits in the live buffer

    held = spy_on_held_commits(store._repository, store._feed)
    creating = asyncio.create_task(store.messages.create(session_id, role=Role.USER))
    assert await asyncio.to_thread(held.wait, WAIT), "the local commit was not held"
    reads.release()
    async with asyncio.timeout(WAIT):
        mine = await creating  # the writer is not left waiting for the unreadable gap
        with pytest.raises(RevisionCompacted) as raised:
            await waiting
    assert raised.value.compacted >= compacted
    assert behind.revision is None  # it received nothing: it claims nothing
    with pytest.raises(RevisionCompacted):
        await _receive(sessions_behind)
    with pytest.raises(RevisionCompacted):
        await _receive(behind)  # and again

    ledger = Ledger()
    await follow(retained, ledger, until=mine.revision)
    assert ledger.received[-1].message_id == mine.id

    snap = await store.messages.snapshot()
    fresh = store.messages.subscribe(since=snap.revision)
    async with open_store(store.url) as other:
        theirs = await other.messages.create(session_id, role=Role.USER)
    for sub in (fresh, retained):
        event = await _receive(sub)
        assert (event.type, event.payload.id) == (EventType.CREATED, theirs.id)
    for sub in (behind, sessions_behind, retained, fresh):
        sub.close()


async def test_a_live_subscription_that_missed_compacted_changes_is_told(store: Store) -> None:
    """A live subscription (``since=None``) that may have missed compacted changes is told,
    and its resume point stays what it delivered."""
    reads = FeedReads(store._repository)
    session = await store.sessions.create("live")
    live = store.messages.subscribe(session_id=session.id)
    await reads.held()
    first = await store.messages.create(session.id, role=Role.USER)  # contiguous: published
    assert (await _receive(live)).payload.id == first.id
    await _prune_elsewhere(store.url)
    reads.release()
    with pytest.raises(RevisionCompacted):
        await _receive(live)
    assert live.revision == first.revision
    live.close()


# -- a read that fails ------------------------------------------------------------------------


async def test_a_failing_feed_read_never_holds_a_writer(store: Store) -> None:
    """The feed's reads fail while a local commit waits for a gap another store left: the
    writer returns after one failed read, and the subscription reads the gap back itself —
    it ends on the database's state, nothing lost, nothing twice."""
    reads = FeedReads(store._repository)
    session = await store.sessions.create("failing")
    sub = store.messages.subscribe(session_id=session.id)
    await reads.held()
    async with open_store(store.url) as other:  # the gap
        theirs = await other.messages.create(session.id, role=Role.USER)
    held = spy_on_held_commits(store._repository, store._feed)
    creating = asyncio.create_task(store.messages.create(session.id, role=Role.USER))
    assert await asyncio.to_thread(held.wait, WAIT)
    reads.failing = True
    reads.release()
    async with asyncio.timeout(WAIT):
        mine = await creating
    assert reads.failures >= 1
    ledger = Ledger()
    await follow(sub, ledger, until=mine.revision)
    assert {r.message_id for r in ledger.received} == {theirs.id, mine.id}
    reads.failing = False
    async with open_store(store.url) as other:
        later = await other.messages.create(session.id, role=Role.USER)
    await follow(sub, ledger, until=later.revision)
    check_ledger(ledger.received, await database_truth(store.url, session.id))
    sub.close()


async def test_a_feed_that_cannot_start_never_holds_a_writer(store: Store) -> None:
    """The feed cannot read the counter to start (the first subscription just attached), and
    a local commit waits for it: the writer returns after a failed read, the feed starts at
    that commit, and the subscription reads back what it may have missed."""
    session = await store.sessions.create("no counter")
    read_counter = store._repository.read_counter
    failing = [True]

    async def flaky() -> tuple[int, int]:
        if failing[0]:
            raise OSError("injected: the counter read failed")
        return await read_counter()

    store._repository.read_counter = flaky  # type: ignore[method-assign]
    sub = store.messages.subscribe(session_id=session.id)
    async with asyncio.timeout(WAIT):
        mine = await store.messages.create(session.id, role=Role.USER)
    assert store._feed.horizon is not None and store._feed.horizon >= mine.revision
    event = await _receive(sub)
    assert (event.type, event.payload.id) == (EventType.CREATED, mine.id)
    failing[0] = False
    async with open_store(store.url) as other:
        theirs = await other.messages.create(session.id, role=Role.USER)
    event = await _receive(sub)
    assert (event.type, event.payload.id) == (EventType.CREATED, theirs.id)
    sub.close()


async def test_a_failed_replay_read_is_read_again_by_the_next_receive(store: Store) -> None:
    """A replay page whose read failed raises from that ``receive()``; the next one reads
    again (the failure is not kept as the page's result)."""
    session = await store.sessions.create("replay")
    message = await store.messages.create(session.id, role=Role.USER)
    reads = FeedReads(store._repository)
    reads.release()
    reads.fail_replays = 1
    sub = store.messages.subscribe(since=0, session_id=session.id)
    with pytest.raises(OSError, match="injected"):
        await _receive(sub)
    event = await _receive(sub)
    assert (event.type, event.payload.id) == (EventType.CREATED, message.id)
    sub.close()


# -- closing from another thread ---------------------------------------------------------------


async def test_close_from_another_thread_is_handed_to_the_loop(store: Store) -> None:
    """``FeedSubscription.close()`` (and a collection) off the loop: the feed stops once the
    loop ran the close, a waiting receive ends, nothing raises in the other thread."""
    session = await store.sessions.create("threads")
    sub = store.messages.subscribe(session_id=session.id)
    waiting = asyncio.create_task(sub.receive())
    await asyncio.sleep(0)
    await asyncio.to_thread(sub.close)
    async with asyncio.timeout(WAIT):
        with pytest.raises(SubscriptionEnded):
            await waiting
    assert sub.closed
    assert not store._feed.active

    collected = store.messages.subscribe()
    assert store._feed.active
    box = [collected]
    del collected

    def drop() -> None:
        box.clear()
        gc.collect()

    await asyncio.to_thread(drop)
    await asyncio.sleep(0)
    assert not store._feed.active
    message = await store.messages.create(session.id, role=Role.USER)
    assert message.revision > 0


def _child_writes(url: str) -> None:
    """Another OS process commits a few changes to the database, then exits."""
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.feed_child",
            "stream",
            "--url",
            url,
            "--streams",
            "1",
            "--messages",
            "1",
            "--deltas",
            "2",
            "--delete-every",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert "done" in child.stdout


def test_sync_close_from_the_callers_thread_never_holds_a_writer(db_url: str) -> None:
    """A blocking store's subscription is closed from the caller's thread while a local
    ``create()`` waits for the changes another process committed just before it: the close
    runs on the store's loop, which publishes the held commit, and the writer returns."""
    with messagestore.sync.open_store(db_url) as store:
        inner: Store = store._store
        session = store.sessions.create("sync close")
        reads = FeedReads(inner._repository)
        sub = store.messages.subscribe()
        assert reads.waiting.wait(WAIT), "the feed never read"
        _child_writes(db_url)  # the gap
        held = store._runner.run(spy_on_held_commits, inner._repository, inner._feed)
        created: list[Message] = []
        writer = threading.Thread(
            target=lambda: created.append(store.messages.create(session.id, role=Role.USER)),
            daemon=True,
        )
        writer.start()
        assert held.wait(WAIT), "the local commit was not held"
        sub.close()  # from this thread, not the loop's
        writer.join(WAIT)
        assert not writer.is_alive(), "create() is still waiting for its held commit"
        assert created and created[0].revision > 0
        with store.messages.subscribe() as again:
            later = store.messages.create(session.id, role=Role.USER)
            event = again.get(timeout=WAIT)
            assert event.payload.id == later.id
        reads.release()
