"""What each published message event changed: the delta from the message's previous event.

The feed publishes every change of a message in revision order. A subscriber that applies
changes (a UI, the HTTP event stream) needs only what changed since the event it received
before, so each ``UPDATED`` event of a message carries ``event.delta``: a ``MessageDelta``
from the message's previous published state (``delta.base``) to this one, or None when that
state is not remembered (the first event after a subscriber attached, a message evicted from
the bound below). ``CREATED`` and ``DELETED`` events carry none. A change read from what was
appended comes with its delta already (``Change.delta``): taken as it is when it starts at the
remembered state, so no two whole states are compared.

``DeltaTracker`` remembers the newest published state of each unfinished message (bounded, the
oldest forgotten first; a finished or deleted message is forgotten at once), only while the
broker has subscribers. When conflation removes a queued event of a message for a slow
subscriber, ``conflate`` merges the removed event's delta into the newer one (appends
concatenated), so what that subscriber receives still chains: every delta it gets applies to
the state of the event it received before for that message.
"""

from __future__ import annotations

from collections import OrderedDict

from pubsub import Event, EventType

from .._delta import MessageDelta
from .._model import Message

__all__ = ["DeltaTracker", "conflate"]

_REMEMBERED = 4096


class DeltaTracker:
    """The newest published state per unfinished message, and the delta to the next one."""

    def __init__(self, remembered: int = _REMEMBERED) -> None:
        self._remembered = remembered
        self._states: OrderedDict[str, Message] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def published(
        self,
        kind: EventType,
        message: Message,
        listened: bool,
        known: MessageDelta | None = None,
    ) -> MessageDelta | None:
        """Note that ``message`` is published as ``kind``; return the delta it carries.

        ``listened``: the broker has subscribers. Without any, nothing is remembered (and what
        was is forgotten): no subscriber holds a state a later delta could apply to.
        ``known``: the delta the reader built to ``message`` from appends; it is taken as it
        is when it starts at the state remembered, so the whole states are not compared.
        """
        states = self._states
        if not listened:
            if states:
                states.clear()
            return None
        previous = states.pop(message.id, None)
        if kind is EventType.DELETED:
            return None
        delta = None
        if (
            kind is EventType.UPDATED
            and previous is not None
            and previous.revision < message.revision
        ):
            if (
                known is not None
                and known.base == previous.revision
                and known.revision == message.revision
            ):
                delta = known
            else:
                delta = MessageDelta.between(previous, message)
        if not message.is_finished:
            states[message.id] = message
            if len(states) > self._remembered:
                states.popitem(last=False)
        return delta

    def clear(self) -> None:
        self._states.clear()


def conflate(older: Event[Message], newer: Event[Message]) -> Event[Message]:
    """The broker's ``conflate``: ``newer`` takes the place of the removed ``older`` event,
    carrying both deltas merged (None when either is missing or they do not chain)."""
    if newer.delta is None:
        return newer
    merged = None if older.delta is None else older.delta.merge(newer.delta)
    return Event(newer.type, newer.payload, merged)
