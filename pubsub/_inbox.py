"""One subscriber's buffer, and the must-deliver publishes waiting for room in it.

Model: anyio ``streams/memory.py`` and trio ``_channel.py``. Every state change is plain,
synchronous ``*_nowait``-style code on the broker's thread; the only awaits wait on a future
that such a change completes. Nothing is ever polled.

The buffer is a fixed-capacity ring (a preallocated list plus head index and count), so that a
queued event can be replaced *in place* by index in O(1) — that is what conflation needs.

Invariants (they make the ordering guarantees hold):

* Waiting senders exist only while the ring is full. When the consumer takes an event, the
  oldest waiting sender's event moves into the freed place at once, so a later lossy event can
  never slip in ahead of it: it finds the ring full and is dropped, or conflated into a slot of
  an unrelated key.
* ``_slot_by_key[k]`` is the ring index of the newest queued *replaceable* event of key ``k``
  (a lossy ``UPDATED``), and exists only while nothing non-replaceable of key ``k`` has been
  queued (in the ring or as a waiting sender) after it. Queuing a non-replaceable event of key
  ``k`` therefore *seals* ``k``: later events of ``k`` can only land behind it. So conflation
  never reorders the events of one key and never overwrites a ``CREATED``, a ``DELETED`` or a
  must-deliver event.
* Replacing keeps the slot's position: across different keys a conflated event is seen where
  the event it replaced was queued.
* Newest state per key. A replaceable event that finds the ring full and no slot of its key to
  replace is not lost: it waits in ``_latest`` (one entry per key, newest wins, bounded), which
  exists only while the ring is full. When the consumer frees a place, waiting must-deliver
  senders go first, then ``_latest`` entries in the order their keys arrived. A later
  non-replaceable event of the same key supersedes the ``_latest`` entry (it is newer and,
  in ``messagestore``, carries the whole state). So a slow subscriber always ends on the
  newest state of every key, never on a stale one, unless more than ``latest_limit`` keys are
  waiting at once; past that, events are dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from pubsub._errors import SubscriptionEnded, WouldBlock
from pubsub._event import Event

__all__ = [
    "CONFLATED",
    "DELIVERED",
    "DROPPED",
    "FULL",
    "GONE",
    "NO_KEY",
    "Inbox",
    "PendingSend",
]

T = TypeVar("T")

# Outcomes of offering an event to an inbox. DELIVERED is 0 so that the hot loop can test for
# "anything unusual" with a plain truth test.
DELIVERED: Final = 0
CONFLATED: Final = 1
DROPPED: Final = 2
FULL: Final = 3
GONE: Final = 4


class _NoKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_KEY"


NO_KEY: Final[Hashable] = _NoKey()
"""Stands for "this event has no conflation key" (``None`` may be a real key)."""


class PendingSend(Generic[T]):
    """One ``publish_must_deliver`` call waiting for room in one or more full inboxes.

    The same object sits in the waiting-senders deque of every inbox it waits for. ``settled``
    completes when every one of them has either accepted the event or gone away.
    """

    __slots__ = ("accepted", "event", "key", "settled", "unsettled")

    def __init__(self, event: Event[T], key: Hashable, waiting_for: int) -> None:
        self.event = event
        self.key = key
        self.unsettled = waiting_for
        self.accepted = 0
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle_one(self, *, accepted: bool) -> None:
        self.accepted += accepted
        self.unsettled -= 1
        if self.unsettled == 0 and not self.settled.done():
            self.settled.set_result(None)


class Inbox(Generic[T]):
    """The buffer of one subscription; the broker is the producer, the subscription consumes."""

    __slots__ = (
        "_capacity",
        "_conflating",
        "_count",
        "_ended",
        "_getter",
        "_head",
        "_keys",
        "_latest",
        "_latest_limit",
        "_on_superseded",
        "_ring",
        "_senders",
        "_slot_by_key",
    )

    def __init__(
        self,
        capacity: int,
        *,
        conflating: bool,
        on_superseded: Callable[[], None] = lambda: None,
    ) -> None:
        self._capacity = capacity
        self._conflating = conflating
        self._latest: dict[Hashable, Event[T]] = {}
        self._latest_limit = max(16 * capacity, 1024) if conflating else 0
        self._on_superseded = on_superseded
        self._ring: list[Event[T] | None] = [None] * capacity
        self._keys: list[Hashable] = [NO_KEY] * capacity if conflating else []
        self._slot_by_key: dict[Hashable, int] = {}
        self._head = 0
        self._count = 0
        self._senders: deque[PendingSend[T]] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._ended = False

    # ----------------------------------------------------------------- introspection

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def queued(self) -> int:
        return self._count

    @property
    def waiting_senders(self) -> int:
        return len(self._senders)

    @property
    def ended(self) -> bool:
        return self._ended

    # ----------------------------------------------------------------- producer side

    def offer(self, event: Event[T], key: Hashable, replaceable: bool) -> int:
        """Lossy put: DELIVERED, CONFLATED, DROPPED (ring full) or GONE (inbox ended)."""
        if self._ended:
            return GONE
        if self._count < self._capacity:
            self._append(event, key, replaceable)
            return DELIVERED
        if replaceable:
            slot = self._slot_by_key.get(key)
            if slot is not None:
                self._ring[slot] = event
                return CONFLATED
            return self._keep_latest(event, key)
        return DROPPED

    def _keep_latest(self, event: Event[T], key: Hashable) -> int:
        """Hold the newest state of ``key`` until there is room (see the module docstring)."""
        latest = self._latest
        if key in latest:
            latest[key] = event
            return CONFLATED
        if len(latest) < self._latest_limit:
            latest[key] = event
            return DELIVERED
        return DROPPED

    def try_put(self, event: Event[T], key: Hashable) -> int:
        """Must-deliver put without waiting: DELIVERED, FULL or GONE."""
        if self._ended:
            return GONE
        if self._count < self._capacity:
            self._append(event, key, replaceable=False)
            return DELIVERED
        return FULL

    def wait_in_line(self, send: PendingSend[T]) -> None:
        """Queue a must-deliver send behind the full ring (and behind earlier senders)."""
        self._senders.append(send)
        if self._conflating:
            self._slot_by_key.pop(send.key, None)
            if self._latest.pop(send.key, None) is not None:
                self._on_superseded()

    def withdraw(self, send: PendingSend[T]) -> bool:
        """Remove ``send`` if it is still waiting here; True means it never got in."""
        try:
            self._senders.remove(send)
        except ValueError:
            return False
        return True

    def _append(self, event: Event[T], key: Hashable, replaceable: bool) -> None:
        index = self._head + self._count
        if index >= self._capacity:
            index -= self._capacity
        self._ring[index] = event
        self._count += 1
        if self._conflating:
            self._track_key(index, key, replaceable)
        if self._getter is not None:
            self._wake_getter()

    def _track_key(self, index: int, key: Hashable, replaceable: bool) -> None:
        if replaceable:
            self._keys[index] = key
            self._slot_by_key[key] = index
        else:
            self._keys[index] = NO_KEY
            self._slot_by_key.pop(key, None)

    # ----------------------------------------------------------------- consumer side

    def take_nowait(self) -> Event[T]:
        if self._count:
            return self._take()
        if self._ended:
            raise SubscriptionEnded("the subscription is closed or its broker shut down")
        raise WouldBlock("no event is buffered")

    async def take(self) -> Event[T]:
        while not self._count:
            if self._ended:
                raise SubscriptionEnded("the subscription is closed or its broker shut down")
            await self._wait_for_event()
        return self._take()

    async def _wait_for_event(self) -> None:
        if self._getter is not None:
            raise RuntimeError(
                "another task is already waiting in receive() on this subscription; "
                "a subscription has exactly one consumer (subscribe again for another)"
            )
        getter = asyncio.get_running_loop().create_future()
        self._getter = getter
        try:
            await getter
        finally:
            if self._getter is getter:
                self._getter = None

    def _take(self) -> Event[T]:
        index = self._head
        event = self._ring[index]
        self._ring[index] = None
        if self._conflating:
            self._release_slot(index)
        index += 1
        self._head = 0 if index == self._capacity else index
        self._count -= 1
        if self._senders:
            self._admit_next_sender()
        elif self._latest:
            self._admit_latest()
        assert event is not None
        return event

    def _release_slot(self, index: int) -> None:
        key = self._keys[index]
        if key is not NO_KEY:
            self._keys[index] = NO_KEY
            if self._slot_by_key.get(key) == index:
                del self._slot_by_key[key]

    def _admit_next_sender(self) -> None:
        send = self._senders.popleft()
        self._append(send.event, send.key, replaceable=False)
        send.settle_one(accepted=True)

    def _admit_latest(self) -> None:
        key = next(iter(self._latest))
        self._append(self._latest.pop(key), key, replaceable=True)

    def _wake_getter(self) -> None:
        getter = self._getter
        self._getter = None
        if getter is not None and not getter.done():
            getter.set_result(None)

    # ----------------------------------------------------------------- ending

    def end(self) -> None:
        """Accept nothing more; keep what is buffered for the consumer to drain."""
        if self._ended:
            return
        self._ended = True
        self._slot_by_key.clear()
        while self._senders:
            self._senders.popleft().settle_one(accepted=False)
        self._wake_getter()

    def close(self) -> None:
        """End and discard whatever is still buffered."""
        self.end()
        self._ring = []
        self._keys = []
        self._latest.clear()
        self._head = self._count = 0
