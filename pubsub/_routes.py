"""Which subscriptions an event reaches: everyone, or the wildcard ones plus its topic's.

With ``topic=`` each event goes to the wildcard subscriptions and its topic's, so a publish
costs O(subscribers it reaches). ``fan_out[topic]`` holds ready-made tuples (the wildcard
inboxes, then the topic's); ``wildcard`` serves topics nobody subscribed to; ``everyone`` serves
a broker without topics. Tuples are rebuilt, never mutated, on join or leave, so a fan-out loop
over an old tuple is never disturbed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from pubsub._inbox import Inbox

__all__ = ["Routes"]

T = TypeVar("T")


class Routes(Generic[T]):
    """The registered inboxes of one broker, grouped by topic."""

    __slots__ = ("_own", "everyone", "fan_out", "wildcard")

    def __init__(self) -> None:
        self.everyone: tuple[Inbox[T], ...] = ()
        self.wildcard: tuple[Inbox[T], ...] = ()
        self.fan_out: dict[Hashable, tuple[Inbox[T], ...]] = {}
        self._own: dict[Hashable, tuple[Inbox[T], ...]] = {}

    def add(self, inbox: Inbox[T]) -> None:
        self.everyone = (*self.everyone, inbox)
        if inbox.topic is None:
            self.wildcard = (*self.wildcard, inbox)
            self._rebuild_all()
        else:
            own = (*self._own.get(inbox.topic, ()), inbox)
            self._own[inbox.topic] = own
            self.fan_out[inbox.topic] = self.wildcard + own

    def remove(self, inbox: Inbox[T]) -> None:
        if inbox not in self.everyone:
            return
        self.everyone = tuple(other for other in self.everyone if other is not inbox)
        topic = inbox.topic
        if topic is None:
            self.wildcard = tuple(other for other in self.wildcard if other is not inbox)
            self._rebuild_all()
            return
        own = tuple(other for other in self._own[topic] if other is not inbox)
        if own:
            self._own[topic] = own
            self.fan_out[topic] = self.wildcard + own
        else:
            del self._own[topic]
            del self.fan_out[topic]

    def clear(self) -> tuple[Inbox[T], ...]:
        """Forget every inbox; return them."""
        everyone = self.everyone
        self.everyone = self.wildcard = ()
        self.fan_out = {}
        self._own = {}
        return everyone

    def _rebuild_all(self) -> None:
        wildcard = self.wildcard
        self.fan_out = {topic: wildcard + own for topic, own in self._own.items()}
