"""One subscription's queue: an ordered subsequence of the broker's publish sequence.

Two ordered parts: the *admitted* entries (at most ``buffer_size``, two parallel deques of
events and their publish numbers) and the *overflow* behind them (an ``OrderedDict``, at most
``overflow_limit``). The overflow is non-empty only while the admitted part is full; entries
leave only from the front or by supersession and join only at the end, so what the consumer
receives is a subsequence of the publish sequence. Supersession never moves an event ahead of
one published before it. All changes are synchronous; the one await (``take``) is cancellable
and loses nothing. Layout and invariants in full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from pubsub._errors import SubscriptionEnded, WouldBlock
from pubsub._event import Event
from pubsub._pending import PendingSend

__all__ = [
    "CONFLATED",
    "DELIVERED",
    "DROPPED",
    "GONE",
    "NO_KEY",
    "WAITING",
    "Inbox",
    "overflow_limit",
]

T = TypeVar("T")

# Outcomes of putting an event into an inbox. DELIVERED is 0 so that the hot loop can test for
# "anything unusual" with a plain truth test.
DELIVERED: Final = 0
"""It joined the queue (admitted, or as the newest state of its key in the overflow)."""
CONFLATED: Final = 1
"""It joined the queue by superseding the replaceable entry of its key (which was removed)."""
DROPPED: Final = 2
"""It did not join the queue: this subscription loses it for good (counted in ``lost``)."""
GONE: Final = 3
"""The inbox has ended; nothing was counted."""
WAITING: Final = 4
"""Must-deliver only: it joined the overflow and is now waited for."""


class _NoKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_KEY"


NO_KEY: Final[Hashable] = _NoKey()
"""Stands for "this event has no conflation key" (``None`` may be a real key)."""

_SWEEP_FLOOR: Final = 64


def overflow_limit(capacity: int) -> int:
    """The overflow bound of a subscription whose ``buffer_size`` is ``capacity``."""
    return max(16 * capacity, 1024)


class Inbox(Generic[T]):
    """The queue of one subscription; the broker produces, the subscription consumes."""

    __slots__ = (
        "_capacity",
        "_conflate",
        "_ended",
        "_events",
        "_getter",
        "_lost",
        "_overflow",
        "_overflow_limit",
        "_replaceable",
        "_seqs",
        "_sweep_at",
        "_waiting",
        "topic",
    )

    def __init__(
        self,
        capacity: int,
        *,
        topic: Hashable = None,
        conflate: Callable[[Event[T], Event[T]], Event[T]] | None = None,
    ) -> None:
        self._capacity = capacity
        self._conflate = conflate
        self._overflow_limit = overflow_limit(capacity)
        self._events: deque[Event[T]] = deque()
        self._seqs: deque[int] = deque()
        self._overflow: OrderedDict[int, Event[T]] = OrderedDict()
        self._replaceable: dict[Hashable, int] = {}
        self._sweep_at = _SWEEP_FLOOR + 2 * capacity
        self._waiting: dict[int, tuple[PendingSend[T], bool]] = {}
        self._getter: asyncio.Future[None] | None = None
        self._ended = False
        self._lost = 0
        self.topic = topic

    # ----------------------------------------------------------------- introspection

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def overflow_limit(self) -> int:
        return self._overflow_limit

    @property
    def queued(self) -> int:
        return len(self._events)

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._overflow)

    @property
    def waiting_senders(self) -> int:
        return len(self._waiting)

    @property
    def lost(self) -> int:
        return self._lost

    @property
    def ended(self) -> bool:
        return self._ended

    # ----------------------------------------------------------------- lossy producer side

    def offer(self, event: Event[T], seq: int, key: Hashable, replaceable: bool) -> int:
        """Lossy put: DELIVERED, CONFLATED, DROPPED or GONE. ``publish``'s hot path."""
        if self._ended:
            return GONE
        events = self._events
        if len(events) < self._capacity:
            events.append(event)
            self._seqs.append(seq)
            if replaceable:
                self._replaceable[key] = seq
            if self._getter is not None:
                self._wake_getter()
            return DELIVERED
        if key is NO_KEY:
            self._lost += 1
            return DROPPED
        return self._offer_when_full(event, seq, key, replaceable)

    def _offer_when_full(self, event: Event[T], seq: int, key: Hashable, replaceable: bool) -> int:
        superseded = self._supersede(key)
        if superseded is not None:
            if self._conflate is not None:
                event = self._conflate(superseded, event)
            # Join the end of the queue. It was full, so no consumer is waiting to be woken.
            if len(self._events) < self._capacity:
                self._events.append(event)
                self._seqs.append(seq)
            else:
                self._overflow[seq] = event
            if replaceable:
                self._replaceable[key] = seq
            return CONFLATED
        if replaceable and len(self._overflow) < self._overflow_limit:
            self._overflow[seq] = event  # the newest state of its key, in order
            self._replaceable[key] = seq
            return DELIVERED
        self._lost += 1
        return DROPPED

    # ----------------------------------------------------------------- must-deliver side

    def put_must_deliver(self, send: PendingSend[T]) -> int:
        """Must-deliver put: DELIVERED or CONFLATED (admitted now), WAITING, DROPPED or GONE.

        On WAITING the event is in the overflow and ``send`` is registered as waiting here;
        the caller adds this inbox to ``send``.
        """
        if self._ended:
            return GONE
        seq, event = send.seq, send.event
        if len(self._events) < self._capacity:
            self._events.append(event)
            self._seqs.append(seq)
            if self._getter is not None:
                self._wake_getter()
            return DELIVERED
        removed = None if send.key is NO_KEY else self._supersede(send.key)
        superseded = removed is not None
        if removed is not None and self._conflate is not None:
            event = self._conflate(removed, event)
        if len(self._events) < self._capacity:  # the superseded entry freed an admitted place
            self._events.append(event)
            self._seqs.append(seq)
            return CONFLATED
        if len(self._overflow) >= self._overflow_limit:  # never after a supersession
            self._lost += 1
            return DROPPED
        self._overflow[seq] = event
        self._waiting[seq] = (send, superseded)
        return WAITING

    def stop_waiting(self, send: PendingSend[T]) -> bool:
        """End the wait for ``send`` here, unadmitted; True if it was still waited for.

        The event stays queued. A must-deliver ``UPDATED`` becomes the replaceable entry of
        its key (unless a newer one is already queued), so the next event of the key may
        supersede it.
        """
        if self._waiting.pop(send.seq, None) is None:
            return False
        if send.replaceable:
            current = self._replaceable.get(send.key)
            if current is None or current < send.seq:
                self._replaceable[send.key] = send.seq
        return True

    # ----------------------------------------------------------------- queue mechanics

    def _supersede(self, key: Hashable) -> Event[T] | None:
        """Remove the replaceable entry of ``key`` if one is queued; return it (or None)."""
        seq = self._replaceable.pop(key, None)
        if seq is None:
            return None
        if self._overflow:
            removed = self._overflow.pop(seq, None)
            if removed is not None:
                return removed
        seqs = self._seqs
        if not seqs or seq < seqs[0]:
            return None  # already taken
        if seqs[-1] == seq:  # the newest admitted entry (one key streaming)
            seqs.pop()
            removed = self._events.pop()
        elif seqs[0] == seq:  # the oldest (keys taking turns)
            seqs.popleft()
            removed = self._events.popleft()
        else:
            index = bisect_left(seqs, seq)
            del seqs[index]
            removed = self._events[index]
            del self._events[index]
        if self._overflow:
            self._admit_next()
        return removed

    def _admit_next(self) -> None:
        """Move the oldest overflow entry into the freed admitted place."""
        seq, event = self._overflow.popitem(last=False)
        self._events.append(event)
        self._seqs.append(seq)
        if self._waiting:
            waited = self._waiting.pop(seq, None)
            if waited is not None:
                send, superseded = waited
                send.settle_one(superseded=superseded)

    def _forget_stale_keys(self) -> None:
        """Drop key entries whose event already left the queue (amortised O(1) per event)."""
        front = self._seqs[0] if self._seqs else None
        self._replaceable = (
            {}
            if front is None
            else {key: seq for key, seq in self._replaceable.items() if seq >= front}
        )
        self._sweep_at = _SWEEP_FLOOR + 2 * (self._capacity + len(self._replaceable))

    # ----------------------------------------------------------------- consumer side

    def take_nowait(self) -> Event[T]:
        if self._events:
            return self._take()
        if self._ended:
            raise SubscriptionEnded("the subscription is closed or its broker shut down")
        raise WouldBlock("no event is buffered")

    async def take(self) -> Event[T]:
        while not self._events:
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
        self._seqs.popleft()
        event = self._events.popleft()
        if self._overflow:
            self._admit_next()
        if len(self._replaceable) > self._sweep_at:
            self._forget_stale_keys()
        return event

    def _wake_getter(self) -> None:
        getter = self._getter
        self._getter = None
        if getter is not None and not getter.done():
            getter.set_result(None)

    # ----------------------------------------------------------------- ending

    def end(self) -> None:
        """Accept nothing more; keep what is queued (overflow included) for the consumer.

        Must-deliver events still waited for here stay queued; their waits end now, without
        a drop (they count as delivered: a drained subscription receives them).
        """
        if self._ended:
            return
        self._ended = True
        self._replaceable = {}
        waiting, self._waiting = self._waiting, {}
        for send, superseded in waiting.values():
            send.settle_one(superseded=superseded)
        self._wake_getter()

    def close(self) -> None:
        """End and discard whatever is still queued."""
        self.end()
        self._events.clear()
        self._seqs.clear()
        self._overflow.clear()
