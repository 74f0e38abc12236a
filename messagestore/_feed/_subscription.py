"""A subscription to the change feed: replay from a revision, then live; late, never wrong.

``since=r`` delivers the newest state of everything in scope changed after ``r`` (read in pages
up to the revision ``R`` the first page saw), then the live events after ``R``; ``since=None``
only what commits after ``subscribe()``. Revisions received only increase; ``revision`` is a
resume point (everything at or below it delivered or superseded, nothing above). Overflow or a
feed skip: drop what is held and replay from the resume point. ``RevisionUnavailable`` from
``receive`` when it cannot resume. The story: docs/ARCHITECTURE.md, "The life of one change
through the feed"; the full contract: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

from pubsub import Broker, Event, Subscription, SubscriptionEnded, WouldBlock

from .._changes import Change, Kind
from .._database._repository import Repository
from .._database._revisions import ChangePage
from .._errors import RevisionFromFuture, RevisionUnavailable
from .._model import Message, Session
from ._feed import Feed

__all__ = ["MAX_REVISION", "FeedSubscription"]

T = TypeVar("T", Message, Session)

_PAGE = 500

MAX_REVISION = 2**63 - 1
"""The largest revision the revision columns (signed 64-bit) can hold."""


class FeedSubscription(Generic[T]):
    """One reader of the change feed; make it with ``store.messages.subscribe()`` or
    ``store.sessions.subscribe()``. An async iterator of ``pubsub.Event``."""

    def __init__(
        self,
        feed: Feed,
        repository: Repository,
        broker: Broker[T],
        kind: Kind,
        *,
        buffer_size: int | None,
        since: int | None,
        session_id: str | None = None,
    ) -> None:
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise TypeError(f"since must be a revision (int) or None, not {since!r}")
        if since is not None and not 0 <= since <= MAX_REVISION:
            raise ValueError(f"since must be a revision from 0 to 2**63 - 1, not {since}")
        self._broker: Broker[T] = broker
        self._buffer_size = buffer_size
        self._topic: Hashable | None = session_id
        self._live: Subscription[T] = self._subscribe_live()
        self._feed = feed
        self._repository = repository
        self._kind = kind
        self._session_id = session_id
        self._replay: deque[Change] = deque()
        self._cursor: tuple[int, int | None] | None = None if since is None else (since, None)
        self._floor = -1 if since is None else since
        self._last: int | None = since
        # Where a resync starts while nothing was delivered yet: ``since``, else the feed's
        # horizon now (nothing after it was published yet), else the feed's origin.
        self._origin: int | None = since if since is not None else feed.horizon
        self._seen_lost = 0
        # The replay page being read: (cursor it was asked for, the read).
        self._reading: tuple[tuple[int, int | None], asyncio.Future[ChangePage]] | None = None
        self._started = since is None
        # ``since`` is not known to be reached yet: ``revision`` must not claim it.
        self._unverified = since is not None and since > 0
        # The feed skipped revisions: what the live buffer holds may have gaps.
        self._missed = False
        self._failure: RevisionUnavailable | None = None
        self._closed = False
        feed.attach(self)
        self._detach: weakref.finalize[[], Any] = weakref.finalize(self, feed.detach)
        self._detach.atexit = False

    # -- state -----------------------------------------------------------------------------------

    @property
    def revision(self) -> int | None:
        """The resume point: pass it as ``since`` to a new subscription to continue here.

        Every change at or below it was delivered (or superseded by a delivered newer state),
        and none above it. None until the first event or until the feed is known to be idle
        past ``subscribe()``; with ``since``, None until the database is known to have reached
        it (and for good once ``receive()`` raised ``RevisionFromFuture``): it never claims a
        revision the database has not reached.
        """
        position = self._last
        if (
            self._unverified
            and position is not None
            and (self._failure is not None or not self._reached(position))
        ):
            return None
        horizon = self._feed.horizon
        if (
            horizon is not None
            and self._started
            and self._cursor is None
            and not self._replay
            and not self._missed
            and self._failure is None
            and self._live.pending == 0
            and self._live.lost == self._seen_lost
        ):
            return horizon if position is None else max(position, horizon)
        return position

    @property
    def buffer_size(self) -> int:
        return self._live.buffer_size

    @property
    def pending(self) -> int:
        """Events ready to be received without reading the database."""
        return len(self._replay) + self._live.pending

    @property
    def waiting_senders(self) -> int:
        """Must-deliver publishers still waiting for room in this subscription's buffer."""
        return self._live.waiting_senders

    @property
    def queued(self) -> int:
        """The same as ``pending`` (the name ``pubsub.Subscription`` uses)."""
        return self.pending

    @property
    def closed(self) -> bool:
        return self._closed or self._live.closed

    # -- receiving -------------------------------------------------------------------------------

    async def receive(self) -> Event[T]:
        """The next event; ``SubscriptionEnded`` when there will be none,
        ``RevisionUnavailable`` when the subscription cannot resume (see the module doc)."""
        while True:
            self._check_open()
            if not self._started:
                if await self._feed.activated() is None:
                    raise SubscriptionEnded("the store is closed")
                self._started = True
            if self._missed or self._live.lost != self._seen_lost:
                if self._last is None and self._origin is None:
                    self._origin = self._feed.origin
                    if self._origin is None:  # lost before the feed started: wait for it
                        if await self._feed.activated() is None:
                            raise SubscriptionEnded("the store is closed")
                        continue
                self._resync()
            if self._cursor is not None and not self._replay:
                if self._feed.closed:  # the rest of the replay is not read any more
                    raise SubscriptionEnded("the store is closed")
                await self._read_page()
                continue
            if self._replay:
                event = self._from_replay()
                if event is not None:
                    return event
                continue
            live = self._live
            lost = live.lost
            try:
                event = await live.receive()
            except SubscriptionEnded:
                if live is not self._live:
                    continue  # replaced because the feed skipped: replay from the last delivered
                raise
            if live is not self._live or live.lost != lost:
                continue  # something before it may be gone: replay from the last delivered
            if self._accept(event):
                return event

    def receive_nowait(self) -> Event[T]:
        """The next event if one is ready; ``WouldBlock`` if the database must be read first
        (or nothing is buffered), ``SubscriptionEnded`` when there will be none."""
        while True:
            self._check_open()
            if (
                not self._started
                or self._missed
                or self._live.lost != self._seen_lost
                or (self._cursor is not None and not self._replay)
            ):
                raise WouldBlock("the subscription must read the database first")
            if self._replay:
                event = self._from_replay()
                if event is not None:
                    return event
                continue
            event = self._live.receive_nowait()
            if self._accept(event):
                return event

    def __aiter__(self) -> FeedSubscription[T]:
        return self

    async def __anext__(self) -> Event[T]:
        try:
            return await self.receive()
        except SubscriptionEnded:
            raise StopAsyncIteration from None

    def _accept(self, event: Event[T]) -> bool:
        revision = event.payload.revision
        if revision <= self._floor or (self._last is not None and revision <= self._last):
            return False
        self._last = revision
        return True

    def _from_replay(self) -> Event[T] | None:
        change = self._replay.popleft()
        revision = change.revision
        if self._last is not None and revision <= self._last:
            return None
        self._last = revision
        return Event(change.type, change.payload)  # type: ignore[arg-type]

    def _resync(self) -> None:
        """The broker lost an event for us, or the feed skipped: forget the replay, read again
        from the last revision delivered."""
        self._missed = False
        self._seen_lost = self._live.lost
        self._replay.clear()
        start = self._last if self._last is not None else self._origin
        assert start is not None
        self._cursor = (start, None)

    async def _read_page(self) -> None:
        """Read the next page of the replay.

        The read is one database job this subscription keeps until it is used: a receive
        that is cancelled while it waits (a keep-alive timeout around ``receive()``) leaves it
        running, and the next receive takes its result instead of starting another read.
        """
        assert self._cursor is not None
        after, upto = self._cursor
        reading = self._reading
        if reading is None or reading[0] != self._cursor:
            future = asyncio.ensure_future(
                self._repository.read_changes(
                    after,
                    upto=upto,
                    limit=_PAGE,
                    session_id=self._session_id,
                    kinds=frozenset({self._kind}),
                )
            )
            future.add_done_callback(_retrieve)
            reading = self._reading = (self._cursor, future)
        try:
            page = await asyncio.shield(reading[1])
        except asyncio.CancelledError:
            if reading[1].cancelled():
                self._reading = None  # the read itself was cancelled: the next receive reads
            raise  # else the read goes on; the next receive takes its result
        except RevisionUnavailable as exc:
            raise self._fail(exc) from None
        except BaseException:
            self._reading = None  # the next receive reads again
            raise
        self._reading = None
        if after > page.newest:
            raise self._fail(RevisionFromFuture(after, page.newest))
        self._unverified = False
        if upto is None:
            upto = page.newest
        if page.more:
            self._cursor = (page.end, upto)
        else:
            self._cursor = None
            self._floor = max(self._floor, upto)
        self._replay.extend(page.changes)

    def _reached(self, revision: int) -> bool:
        """True if the database is known to have reached ``revision`` (without reading it)."""
        horizon = self._feed.horizon
        known = max(self._feed.newest_local, -1 if horizon is None else horizon)
        return revision <= known

    def _fail(self, error: RevisionUnavailable) -> RevisionUnavailable:
        """The subscription cannot resume: raise ``error`` from now on, hold nothing."""
        self._failure = error
        self._reading = None
        self._replay.clear()
        self._cursor = None
        self._live.close()  # no must-deliver publisher waits for a buffer nobody will read
        self._detach()
        return error

    def _subscribe_live(self) -> Subscription[T]:
        if self._topic is not None:
            return self._broker.subscribe(buffer_size=self._buffer_size, topic=self._topic)
        return self._broker.subscribe(buffer_size=self._buffer_size)

    def _skipped(self) -> None:
        """The feed skipped revisions (``Follower._skipped``): replace the live buffer (a new one,
        registered before the read-back, so nothing falls between) and replay from the resume
        point on the next receive. Closing the old buffer wakes a receive waiting on it."""
        if self._closed or self._failure is not None or self._live.closed:
            return
        self._missed = True
        stale, self._live = self._live, self._subscribe_live()
        self._seen_lost = self._live.lost
        stale.close()

    # -- closing ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SubscriptionEnded("the subscription is closed")
        if self._failure is not None:
            raise self._failure.with_traceback(None)

    def close(self) -> None:
        """Stop receiving now; idempotent. From another thread than the store's loop it is
        handed to the loop (``RuntimeError`` if that loop is closed)."""
        if self._closed:
            return
        if not self._feed.on_loop_thread:
            self._feed.hand_over(self.close)
            return
        self._closed = True
        self._reading = None
        self._replay.clear()
        self._cursor = None
        self._live.close()
        self._detach()

    async def __aenter__(self) -> FeedSubscription[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<FeedSubscription {self._kind} {state} revision={self.revision} "
            f"last={self._last} floor={self._floor} started={self._started} "
            f"cursor={self._cursor} replay={len(self._replay)} reading={self._reading is not None} "
            f"missed={self._missed} pending={self._live.pending} "
            f"lost={self._live.lost}/{self._seen_lost} failure={self._failure!r}>"
        )


def _retrieve(future: asyncio.Future[ChangePage]) -> None:
    """A read nobody waits for any more (the subscription closed) must not log its error."""
    if not future.cancelled():
        future.exception()
