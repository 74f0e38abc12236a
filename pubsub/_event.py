"""The unit the broker moves: an :class:`Event` is an :class:`EventType` plus a payload.

``Event`` is frozen and slotted; one object is created per publish and handed to every
subscriber, so it never changes, and its payload is not copied (publishers hand over payloads
they no longer mutate). ``EventType`` (``created``, ``updated``, ``deleted``) is a ``StrEnum``:
the life cycle of a stored row. Only ``UPDATED`` may be superseded by a newer event of its key;
``CREATED`` and ``DELETED`` mark a key's ends and are never removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

__all__ = ["Event", "EventType", "as_event_type"]

T = TypeVar("T")


class EventType(StrEnum):
    """What happened to the payload's subject."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True, eq=False)
class Event(Generic[T]):
    """One published change: its ``type``, the ``payload`` it carries, and optionally a
    ``delta``.

    ``delta`` is opaque to the broker: what the publisher says changed since the previous
    event of the same key, for consumers that apply changes instead of replacing the whole
    payload. It takes no part in equality. When conflation removes a queued event of a key,
    the broker's ``conflate`` function (``Broker(conflate=...)``) decides what the newer event
    carries instead (by default it is delivered as published).
    """

    # Hand-written instead of ``slots=True``: on Python 3.11 the class that ``slots=True``
    # rebuilds breaks the frozen ``__setattr__``, and with it ``Event[int](...)``.
    __slots__ = ("delta", "payload", "type")

    type: EventType
    payload: T
    delta: Any

    def __init__(self, type: EventType, payload: T, delta: Any = None) -> None:
        # One Event is built per publish: fill the slots through their descriptors, which
        # skips the frozen ``__setattr__`` the generated ``__init__`` would go through (about
        # half the cost of a publish to one subscriber). Frozenness for everyone else is kept.
        _set_type(self, type)
        _set_payload(self, payload)
        _set_delta(self, delta)

    # Equality and hash by type and payload only (written out: a dataclass field default
    # with ``compare=False`` would clash with the hand-written slots).
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.type, self.payload) == (other.type, other.payload)

    def __hash__(self) -> int:
        return hash((self.type, self.payload))


_set_type = Event.__dict__["type"].__set__
_set_payload = Event.__dict__["payload"].__set__
_set_delta = Event.__dict__["delta"].__set__


_BY_VALUE: dict[str, EventType] = {member.value: member for member in EventType}


def as_event_type(value: object) -> EventType:
    """Return ``value`` as an ``EventType`` or raise a ``ValueError`` naming it.

    Accepts the enum members and their string values (``"updated"``).
    """
    if isinstance(value, EventType):
        return value
    if isinstance(value, str) and value in _BY_VALUE:
        return _BY_VALUE[value]
    allowed = ", ".join(repr(member.value) for member in EventType)
    raise ValueError(f"event_type must be an EventType or one of {allowed}; got {value!r}")
