"""A client of ``GET /api/events`` that keeps its copy of every message by the wire rules:
whole frames (``created``, ``updated``) replace the copy, ``deleted`` drops it, a ``delta``
applies to the copy at its ``base`` only.

:class:`WireView` is the client's state and the rules. A delta it cannot apply (no copy, a copy
at another revision, or one the delta does not fit) is refused: the copy is dropped and the
message fetched (``GET /api/messages/{id}``), as a UI does. A ``strict`` view (a client that
applied every frame it got) counts any refusal, any whole frame that is not newer than the
copy, and any delta older than the copy as a failure of the server: with a correct server an
honest client never needs to fetch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx

from messagestore import Message, MessageDelta
from messagestore._message_json import message_from_json
from tests.support.server_helpers import SSEEvent

FIELDS = (
    "id",
    "session_id",
    "role",
    "parts",
    "model",
    "provider",
    "created_at",
    "updated_at",
    "is_summary_message",
    "revision",
)


def fields(message: Message) -> tuple[object, ...]:
    """Every field of ``message``, for comparing a client's copy with the database."""
    return tuple(getattr(message, name) for name in FIELDS)


@dataclass
class WireView:
    """One client's copy of the messages it hears about (see the module docstring)."""

    strict: bool = True
    messages: dict[str, Message] = field(default_factory=dict)
    frames: int = 0
    whole: int = 0
    applied: int = 0
    refused: int = 0
    stale: int = 0  # deltas that end at or below the copy's revision (after a fetch): skipped
    fetched: int = 0
    failures: list[str] = field(default_factory=list)

    def take(self, event: SSEEvent) -> str | None:
        """Apply one frame; the id of a message to fetch when a delta was refused."""
        self.frames += 1
        data = json.loads(event.data)
        if event.event == "deleted":
            self.messages.pop(data["id"], None)
            return None
        if event.event in ("created", "updated"):
            message = message_from_json(data)
            copy = self.messages.get(message.id)
            if copy is not None and copy.revision >= message.revision:
                if self.strict:
                    self.failures.append(
                        f"whole {message.id} at {message.revision}, copy at {copy.revision}"
                    )
                return None
            self.messages[message.id] = message
            self.whole += 1
            return None
        if event.event != "delta":
            self.failures.append(f"unexpected frame {event.event!r}")
            return None
        delta = MessageDelta.from_json(data)
        copy = self.messages.get(delta.id)
        if copy is not None and delta.revision <= copy.revision:
            self.stale += 1
            if self.strict:
                self.failures.append(
                    f"delta {delta.base}->{delta.revision} of {delta.id} "
                    f"older than the copy at {copy.revision}"
                )
            return None
        try:
            if copy is None:
                raise ValueError(f"no copy of {delta.id}")
            self.messages[delta.id] = delta.apply(copy)
        except ValueError as exc:
            self.refused += 1
            self.messages.pop(delta.id, None)
            if self.strict:
                self.failures.append(f"refused: {exc}")
            return delta.id
        self.applied += 1
        return None

    async def fetch(self, client: httpx.AsyncClient, message_id: str) -> None:
        """Replace the copy with the stored state (none if the message is gone)."""
        self.fetched += 1
        response = await client.get(f"/api/messages/{message_id}")
        if response.status_code == 404:
            self.messages.pop(message_id, None)
            return
        assert response.status_code == 200, response.text
        message = message_from_json(response.json())
        copy = self.messages.get(message_id)
        if copy is None or copy.revision < message.revision:
            self.messages[message_id] = message

    def disagreements(self, stored: list[Message]) -> list[str]:
        """Where this view differs from the stored messages, field by field."""
        out = []
        truth = {m.id: m for m in stored}
        for message_id in sorted(truth.keys() | self.messages.keys()):
            mine, theirs = self.messages.get(message_id), truth.get(message_id)
            if mine is None or theirs is None:
                out.append(f"{message_id}: {'missing' if mine is None else 'not stored'}")
                continue
            for name, a, b in zip(FIELDS, fields(mine), fields(theirs), strict=True):
                if a != b:
                    out.append(f"{message_id}.{name}: {a!r:.80} != {b!r:.80}")
        return out
