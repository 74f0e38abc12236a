"""The feed: every committed change, published once, in revision order, from every process.

Local commits reach ``announce`` from their commit hook with the revisions they took; other
processes' commits are read from the database after a hint (``_listen``); a message that was
only appended to is read from its new append rows (``_database._read_states``) and published
with their delta, not as a whole state. While a feed subscription exists the feed keeps a
horizon: a commit following it is published at once, one after a gap is held until the gap is
read. Terminal changes go on the brokers' must-deliver
path. Every wait ends: a failed read or a compacted horizon makes the feed skip and tell each
subscription to replay from its resume point. The story: docs/ARCHITECTURE.md, "The life of one
change through the feed".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pubsub import Broker, EventType

from .._changes import Change, Kind
from .._database._database import Revisions
from .._database._read_states import ReadStates
from .._database._repository import Repository
from .._errors import BackgroundTaskFailed, RevisionCompacted
from .._futures import resolve
from .._model import Message, Session
from .._supervisor import Loop, Supervisor
from ._deltas import DeltaTracker
from ._listen import start_hints

__all__ = ["Feed", "Follower"]

_log = logging.getLogger("messagestore")
_PAGE = 500
_RETRY_MAX = 2.0


@dataclass(slots=True)
class _Held:
    """A local commit waiting for the revisions before it to be read from the database."""

    first: int
    last: int
    changes: deque[Change]
    done: asyncio.Future[None]
    waits: list[asyncio.Future[None]] = field(default_factory=list)


class Follower(Protocol):
    """A feed subscription, as the feed sees it."""

    def _skipped(self) -> None:
        """The feed skipped revisions it did not publish: what was received live may have
        gaps, so read back from the resume point (called on the loop)."""
        ...


class Feed:
    """Publishes changes in revision order (see the module docstring); one per store."""

    def __init__(
        self,
        repository: Repository,
        messages: Broker[Message],
        sessions: Broker[Session],
        supervisor: Supervisor | None = None,
    ) -> None:
        self._repository = repository
        # The store's supervisor runs the fetch task and the listener; a feed of its own (the
        # command line's ``watch``) owns one, stopped by ``close()``.
        self._own_supervisor = supervisor is None
        self._supervisor = Supervisor("feed") if supervisor is None else supervisor
        self._brokers: dict[Kind, Broker[Message] | Broker[Session]] = {
            Kind.MESSAGE: messages,
            Kind.SESSION: sessions,
        }
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._followers: weakref.WeakSet[Follower] = weakref.WeakSet()
        self._horizon: int | None = None
        self._held: deque[_Held] = deque()
        self._newest_local = 0
        self._subscribers = 0
        self._wanted = asyncio.Event()
        self._activated: asyncio.Future[int | None] | None = None
        self._origin: int | None = None
        self._task: Loop | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._listener: Loop | None = None
        self._deltas = DeltaTracker()
        # What the reads of other processes' changes hold of streaming messages: a change
        # read costs what was appended, not the message (``_read_states``). Replaced, never
        # cleared in place, when the feed skips or stops (a read may still be using it).
        self._read_states = ReadStates()
        self._closed = False
        self._broken = False  # the fetch task died: nothing is held for it any more

    # -- state -----------------------------------------------------------------------------------

    @property
    def horizon(self) -> int | None:
        """Every revision at or below this one has been published (None while inactive)."""
        return self._horizon

    @property
    def active(self) -> bool:
        return self._subscribers > 0

    @property
    def origin(self) -> int | None:
        """Where the feed started when the first current subscription attached: every change
        after it was published after that (None until the horizon is known)."""
        return self._origin

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called: nothing will be read or published any more."""
        return self._closed

    @property
    def newest_local(self) -> int:
        """The newest revision this store committed."""
        return self._newest_local

    @property
    def on_loop_thread(self) -> bool:
        """True when called on the thread of the store's loop (the feed's own)."""
        return threading.get_ident() == self._thread

    def hand_over(self, func: Callable[[], object]) -> None:
        """Run ``func()`` on the store's loop soon (from another thread); ``RuntimeError`` if
        the loop is closed."""
        self._loop.call_soon_threadsafe(func)

    # -- local commits -------------------------------------------------------------------------

    def announce(self, changes: Sequence[Change], taken: Revisions) -> asyncio.Future[None] | None:
        """Publish a local commit's changes (the commit hook); return the wait, if any."""
        if taken is not None:
            self._newest_local = max(self._newest_local, taken[1])
        horizon = self._horizon
        if not self.active or self._closed or self._broken:
            return self._publish_all(changes)
        if taken is None:
            return self._publish_all(changes) if changes else None
        first, last = taken
        if horizon is not None and last <= horizon:
            return None  # already published, read back from the database
        if horizon is not None and not self._held and first == horizon + 1:
            self._horizon = last
            return self._publish_all(changes)
        held = _Held(first, last, deque(changes), self._loop.create_future())
        self._held.append(held)
        self._wanted.set()
        return held.done

    def _publish_all(self, changes: Sequence[Change]) -> asyncio.Future[None] | None:
        waits = [w for w in (self._publish(c) for c in changes) if w is not None]
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return _all(waits)

    def _publish(self, change: Change) -> asyncio.Future[None] | None:
        broker = self._brokers[change.kind]
        payload = change.payload
        delta = None
        if change.kind is Kind.MESSAGE:
            assert isinstance(payload, Message)
            delta = self._deltas.published(
                change.type, payload, broker.subscriber_count > 0, change.delta
            )
        if change.terminal or change.type is not EventType.UPDATED:
            return broker.enqueue_must_deliver(change.type, payload, delta)  # type: ignore[arg-type]
        broker.publish(change.type, payload, delta)  # type: ignore[arg-type]
        return None

    # -- other processes -------------------------------------------------------------------------

    def hint(self, revision: int | None = None, source: str | None = None) -> None:
        """Something may have committed elsewhere (a NOTIFY, a poll, a reconnect)."""
        if not self.active:
            return
        if source is not None and source == self._repository.database.writer_id:
            return
        horizon = self._horizon
        if revision is None or horizon is None or revision > max(horizon, self._newest_local):
            self._wanted.set()

    # -- subscribers -----------------------------------------------------------------------------

    def attach(self, follower: Follower) -> None:
        """A feed subscription starts: keep the horizon from now on (on the loop)."""
        self._followers.add(follower)
        self._subscribers += 1
        if self._subscribers == 1 and not self._closed:
            self._activated = self._loop.create_future()
            self._wanted.set()
            supervisor = self._supervisor
            self._task = supervisor.start("feed", self._run, on_death=self._fetch_died)
            self._listener = start_hints(self._repository, self, supervisor)

    def detach(self) -> None:
        """A feed subscription ended; the last one stops reading and listening.

        From any thread (a subscription closed or collected there): off the loop the work is
        handed to it; once the loop is closed there is nothing left to stop.
        """
        if not self.on_loop_thread:
            with contextlib.suppress(RuntimeError):  # a closed loop: the feed is closed too
                self.hand_over(self.detach)
            return
        self._subscribers -= 1
        if self._subscribers == 0:
            self._deactivate()

    async def activated(self) -> int | None:
        """Wait until the horizon is known (the feed read the counter); return it.

        None if the feed stopped first (the store closed): a subscription then ends, it is not
        cancelled.
        """
        if self._activated is None:
            return None
        return await asyncio.shield(self._activated)

    def _deactivate(self) -> None:
        for loop in (self._listener, self._task):  # newest first
            if loop is not None:
                loop.request_stop()
                self._stopping.add(loop.task)
                loop.task.add_done_callback(self._stopping.discard)
        self._task = self._listener = None
        if self._activated is not None and not self._activated.done():
            self._activated.set_result(None)  # waiting subscriptions end; none is cancelled
        self._activated = None
        self._horizon = None
        self._origin = None
        self._read_states = ReadStates()
        while self._held:  # nobody follows the horizon any more: publish what waited
            held = self._held.popleft()
            self._finish(held, self._publish_all(list(held.changes)))

    # -- the fetch task --------------------------------------------------------------------------

    def _fetch_died(self, _failure: BackgroundTaskFailed) -> None:
        """The fetch task died (its supervisor logged it; writes are refused from now on):
        nobody may wait for it any more. Held commits are published as a failed read would
        publish them (subscriptions are told to read back), later commits (writes already
        under way) are published as they come, and subscriptions still waiting for the
        horizon end."""
        self._broken = True
        if self._held:
            self._skip(self._held[-1].last)
        if self._activated is not None and not self._activated.done():
            self._activated.set_result(None)

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(0.05 * 2**failures, _RETRY_MAX)
                _log.warning(
                    "messagestore feed: reading changes failed (retry in %.2fs): %r", delay, exc
                )
                if self._held:  # writers never wait on a failing read: skip past their commits
                    self._skip(self._held[-1].last)
                await asyncio.sleep(delay)
                self._wanted.set()
            else:
                failures = 0

    async def _catch_up(self) -> None:
        """Read what committed after the horizon and publish it with the held local commits."""
        if self._horizon is None:
            newest, _ = await self._repository.read_counter()
            self._start_at(newest)
        while True:
            horizon = self._horizon
            assert horizon is not None
            try:
                page = await self._repository.read_changes(
                    horizon, upto=None, limit=_PAGE, states=self._read_states
                )
            except RevisionCompacted as exc:
                # Fallen behind the retained history: the gap can never be read.
                _log.warning(
                    "messagestore feed: fell behind the retained history (revision %s is "
                    "compacted up to %s); going on from %s, subscriptions that may have missed "
                    "changes are told",
                    exc.since,
                    exc.compacted,
                    exc.compacted,
                )
                self._skip(exc.compacted)
                continue
            for message_id in page.corrupt:
                _log.warning("messagestore feed: skipped corrupt message row %s", message_id)
            self._merge(page.changes, page.end if page.more else page.newest)
            if page.more:
                continue
            if self._held and self._held[0].first > upto_of(self._horizon) + 1:
                continue  # a local commit after a gap that committed after this read
            return

    def _start_at(self, newest: int) -> None:
        """The horizon is known: publish held commits already in the past (feed subscribers
        skip them; the broker's own subscribers get them), wake subscribers.

        ``origin`` becomes the revision before the first of those held commits (else
        ``newest``): everything after it was published after the first subscription attached.
        """
        origin = newest
        while self._held and self._held[0].last <= newest:
            held = self._held.popleft()
            origin = min(origin, held.first - 1)
            self._finish(held, self._publish_all(list(held.changes)))
        self._horizon = newest
        self._origin = origin
        self._release_contiguous()
        if self._activated is not None and not self._activated.done():
            self._activated.set_result(newest)

    def _merge(self, read: Sequence[Change], upto: int) -> None:
        """Publish read changes and held commits in revision order, up to ``upto``.

        A revision that a held local commit carries is published from it (it knows its event
        type and whether it is terminal), never twice.
        """
        horizon = self._horizon
        assert horizon is not None
        if upto <= horizon:
            return
        pending: dict[int, tuple[Change, _Held | None]] = {
            c.revision: (c, None) for c in read if horizon < c.revision <= upto
        }
        for held in self._held:
            if held.first > upto:
                break
            for change in held.changes:
                if horizon < change.revision <= upto:
                    pending[change.revision] = (change, held)
        for revision in sorted(pending):
            change, owner = pending[revision]
            wait = self._publish(change)
            if owner is not None and wait is not None:
                owner.waits.append(wait)
        self._horizon = upto
        self._release_contiguous()

    def _skip(self, to: int) -> None:
        """Move the horizon to ``to`` (at least) without publishing the revisions before it
        that were not read; publish the held commits it reaches.

        Every current subscription is told first (``Follower._skipped``), so the held commits
        reach the live buffers it reads after that. Their changes are published whole, also
        the revisions at or below ``to``: the broker's own subscribers get this store's
        commits, and a feed subscription skips what its read-back covers.
        """
        if self._closed:
            return
        self._read_states = ReadStates()  # what it holds may miss the skipped revisions
        for follower in list(self._followers):
            follower._skipped()
        horizon = self._horizon
        if horizon is None:  # the counter was never read: start at ``to``
            self._start_at(to)
            return
        self._horizon = max(horizon, to)
        while self._held and self._held[0].first <= self._horizon + 1:
            held = self._held.popleft()
            wait = self._publish_rest(held, horizon)
            self._horizon = max(self._horizon, held.last)
            self._finish(held, wait)

    def _release_contiguous(self) -> None:
        """Finish held commits that are now wholly at or below the horizon, and publish those
        that follow it without a gap."""
        while self._held:
            held = self._held[0]
            horizon = self._horizon
            assert horizon is not None
            if held.last <= horizon:
                self._held.popleft()
                self._finish(held, self._publish_rest(held, horizon))
            elif held.first <= horizon + 1:
                self._held.popleft()
                wait = self._publish_rest(held, horizon)
                self._horizon = held.last
                self._finish(held, wait)
            else:
                return

    def _publish_rest(self, held: _Held, horizon: int) -> asyncio.Future[None] | None:
        rest = [c for c in held.changes if c.revision > horizon]
        held.changes.clear()
        return self._publish_all(rest)

    def _finish(self, held: _Held, wait: asyncio.Future[None] | None) -> None:
        waits = [*held.waits, *([wait] if wait is not None else [])]
        if not waits:
            resolve(held.done)
            return
        _all(waits).add_done_callback(lambda _: resolve(held.done))

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading and listening; publish anything held. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for loop in (self._listener, self._task):  # newest first, one after the other
            if loop is not None:
                await loop.stop()
        self._deactivate()
        if self._stopping:
            await asyncio.wait(set(self._stopping))
        if self._own_supervisor:
            await self._supervisor.stop()


def upto_of(horizon: int | None) -> int:
    assert horizon is not None
    return horizon


def _all(waits: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """One future that completes when every wait has (whatever their outcome)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    remaining = len(waits)

    def one(_: asyncio.Future[None]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            resolve(done)

    for wait in waits:
        wait.add_done_callback(one)
    return done
