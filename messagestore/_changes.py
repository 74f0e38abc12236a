"""A committed change, as the database layer reports it and the change feed announces it.

Every write job that changes messages or sessions records its changes on its ``Tx``, in
revision order (``Tx.record``); the feed publishes them (``pubsub.Event``: the type and the
payload) in commit order. ``terminal`` marks changes that must reach every subscriber (created,
deleted, finished, a tool call added or finished, reasoning ended): they are published on the
broker's must-deliver path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from pubsub import EventType

from ._model import Message, Session

if TYPE_CHECKING:
    from ._delta import MessageDelta

__all__ = ["Change", "Kind"]


class Kind(StrEnum):
    """Which broker a change belongs to."""

    MESSAGE = "message"
    SESSION = "session"


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change: its kind, event type and the stored state (or the deleted one).

    ``delta``, when the reader built the state from what was appended (``_revisions``): the
    change from the message's state at the revision the read started after to ``payload``,
    so the feed need not compare whole states to tell subscribers what changed.
    """

    kind: Kind
    type: EventType
    payload: Message | Session
    terminal: bool = True
    delta: MessageDelta | None = None

    @property
    def revision(self) -> int:
        return self.payload.revision
