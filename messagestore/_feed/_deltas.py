"""What each published message event changed: the delta from the message's previous event.

Each ``UPDATED`` event carries ``event.delta``: a ``MessageDelta`` from the message's previous
published state (``delta.base``), or None when that state is not remembered; ``CREATED`` and
``DELETED`` carry none. A change read from the appends comes with its delta (``Change.delta``),
taken as it is when it starts at the remembered state. ``DeltaTracker`` remembers the newest
published state of each unfinished message (bounded, only while the broker has subscribers).
``conflate`` merges a removed queued event's delta into the newer one, so what a slow
subscriber receives still chains. The story: docs/ARCHITECTURE.md.
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
