"""What ``run_turn`` receives: a ``Turn`` — its inputs, its text, its stored user message —
with helpers to create the reply and to take input that arrives while it runs (``STEER``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._model import Message, Role
from .._store import Store

__all__ = ["Steering", "Turn", "TurnInput"]


@dataclass(frozen=True, slots=True)
class TurnInput:
    """One submitted input as a turn sees it (``submitted_at``: when it was committed)."""

    id: str
    text: str
    metadata: Mapping[str, Any] | None
    key: str | None
    submitted_at: datetime


@dataclass(frozen=True, slots=True)
class Steering:
    """Input a running turn took (``Turn.steering()``), stored as one more user message."""

    inputs: tuple[TurnInput, ...]
    text: str
    user_message: Message


class Turn:
    """One agent turn of a session.

    ``inputs``: the inputs it consumed, oldest first; ``text``: their texts joined by a blank
    line (after the ``SUMMARIZE`` note, if any: ``note``); ``user_message``: the one user
    message stored for it, in the same transaction that consumed the inputs. ``delivery``:
    the newest delivery context routed to the session when the turn started (see
    ``Dispatcher.route``). ``generation``: the dispatcher's generation (see ``reset``).

    ``await turn.reply(model=..., provider=...)`` creates the assistant message (or, with
    ``ReplyConfig``, returns the one created with the turn); stream into it with
    ``store.messages.update``. A reply left unfinished gets its ``Finish`` when the turn
    ends, written in the same transaction as the turn's end: ``END_TURN`` if ``run_turn``
    returned, ``CANCELED`` if the turn was cancelled, ``ERROR`` if it raised. So the
    cheapest turn streams its reply and returns, leaving the ``Finish`` to the dispatcher:
    with ``ReplyConfig`` that is two transactions, the start and the end.
    """

    __slots__ = (
        "_prepared",
        "_replies",
        "_steer",
        "_store",
        "cancel_requested",
        "delivery",
        "generation",
        "id",
        "inputs",
        "note",
        "session_id",
        "started_at",
        "text",
        "user_message",
    )

    def __init__(
        self,
        *,
        turn_id: str,
        session_id: str,
        inputs: tuple[TurnInput, ...],
        text: str,
        note: str,
        user_message: Message,
        delivery: Mapping[str, Any] | None,
        started_at: datetime,
        generation: int,
        store: Store,
        steer: Callable[[Turn], Awaitable[Steering | None]],
        reply: Message | None = None,
    ) -> None:
        self.id = turn_id
        self.session_id = session_id
        self.inputs = inputs
        self.text = text
        self.note = note
        self.user_message = user_message
        self.delivery = delivery
        self.started_at = started_at
        self.generation = generation
        self.cancel_requested = False
        self._store = store
        self._steer = steer
        self._replies: list[Message] = [] if reply is None else [reply]
        self._prepared = reply  # created with the turn; the first ``reply()`` returns it

    @property
    def store(self) -> Store:
        """The store the turn's messages live in."""
        return self._store

    @property
    def replies(self) -> list[Message]:
        """The messages created with ``reply()`` (the objects ``run_turn`` streams into)."""
        return list(self._replies)

    async def reply(self, *, model: str = "", provider: str = "") -> Message:
        """Create (and store) the turn's assistant message; stream into it with ``update``.

        With ``ReplyConfig`` the first call returns the reply created with the turn (a
        ``model`` or ``provider`` given here replaces the configured one on it, stored with
        its next ``update``); later calls create more replies."""
        prepared = self._prepared
        if prepared is not None:
            self._prepared = None
            if model:
                prepared.model = model
            if provider:
                prepared.provider = provider
            return prepared
        message = await self._store.messages.create(
            self.session_id, role=Role.ASSISTANT, model=model, provider=provider
        )
        self._replies.append(message)
        return message

    async def steering(self) -> Steering | None:
        """Take the input that arrived for the session since the turn started (``STEER``
        mode), consumed and stored as one more user message in one transaction; None when
        nothing waits, in other modes, or once the turn is being cancelled."""
        return await self._steer(self)

    def __repr__(self) -> str:
        return f"<Turn {self.id} session={self.session_id} inputs={len(self.inputs)}>"
