"""The wait of one must-deliver publish: which subscriptions it waits for, and how each ended.

One ``PendingSend`` per ``enqueue_must_deliver`` that found a full subscription; its event is
already queued there (in the overflow). Each waited-for subscription settles exactly once:
admitted or ended (``settle_one``: delivered, or conflated), or stopped by the deadline or a
cancellation (a must-deliver drop, the event left queued). ``done`` completes when all settled
or at the deadline; its done-callback stops the remaining waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

from pubsub._event import Event

if TYPE_CHECKING:
    from pubsub._inbox import Inbox

__all__ = ["PendingSend"]

T = TypeVar("T")


class PendingSend(Generic[T]):
    """One must-deliver event waiting to be admitted in one or more subscriptions."""

    __slots__ = (
        "conflated",
        "delivered",
        "done",
        "event",
        "inboxes",
        "key",
        "replaceable",
        "seq",
        "unsettled",
    )

    def __init__(
        self,
        event: Event[T],
        seq: int,
        key: Hashable,
        *,
        replaceable: bool,
        done: asyncio.Future[None],
    ) -> None:
        self.event = event
        self.seq = seq
        """The event's position in the broker's publish sequence (its id in every inbox)."""
        self.key = key
        self.replaceable = replaceable
        """Whether the event becomes replaceable when a wait for it ends unadmitted."""
        self.done = done
        self.inboxes: list[Inbox[T]] = []
        """The subscriptions that had no room when the event was enqueued."""
        self.unsettled = 0
        self.delivered = 0
        self.conflated = 0

    def wait_in(self, inbox: Inbox[T]) -> None:
        self.inboxes.append(inbox)
        self.unsettled += 1

    def settle_one(self, *, superseded: bool) -> None:
        """One subscription admitted the event, or ended while it waited there."""
        if superseded:
            self.conflated += 1
        else:
            self.delivered += 1
        self.unsettled -= 1
        if self.unsettled == 0 and not self.done.done():
            self.done.set_result(None)
