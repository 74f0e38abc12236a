"""Receipts: what ``submit`` returns, and the ledger that resolves each exactly once.

A receipt resolves from what the database recorded — the turn's end, a drop, a stop, a stale
cutoff, or (for input another process ran) the input's final state found by a poll — and the
ledger pops it on the first resolution, so a second report of the same input is a no-op. An
input whose row is gone was deleted with its session (here, by another process, or over HTTP):
it resolves ``DROPPED`` with the reason ``SESSION_DELETED``. Resolution is synchronous (it sets
an event); ``outcome()`` only waits on that event, so a cancelled waiter leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime

from ._config import TurnOutcome

__all__ = ["GONE", "SESSION_DELETED", "Ledger", "Receipt", "outcome_of", "reason_of"]

GONE = "gone"
"""Not a stored state: what a read reports for an input whose row no longer exists (it was
deleted with its session)."""
SESSION_DELETED = "session_deleted"
"""``Receipt.reason`` of input dropped because its session was deleted."""

_FINAL = {o.value: o for o in TurnOutcome} | {GONE: TurnOutcome.DROPPED}


def outcome_of(state: str) -> TurnOutcome | None:
    """The outcome an input row's ``state`` stands for (None while pending or running)."""
    return _FINAL.get(state)


def reason_of(state: str) -> str | None:
    """The reason that goes with ``outcome_of(state)``, when the state tells one."""
    return SESSION_DELETED if state == GONE else None


class Receipt:
    """The receipt of one submitted input: ``await receipt.outcome()``.

    ``id`` is the input's id; ``duplicate`` is True when ``submit(key=...)`` found the input
    already stored (the receipt then follows that input).
    """

    __slots__ = (
        "_event",
        "_outcome",
        "_reason",
        "_waiter",
        "duplicate",
        "id",
        "resolutions",
        "session_id",
        "submitted_at",
    )

    def __init__(
        self,
        input_id: str,
        session_id: str,
        submitted_at: datetime | None,
        *,
        duplicate: bool = False,
        waiter: Callable[[Receipt], Awaitable[None]] | None = None,
    ) -> None:
        self.id = input_id
        self.session_id = session_id
        self.submitted_at = submitted_at
        self.duplicate = duplicate
        self.resolutions = 0  # how often a resolution was attempted and taken (at most 1)
        self._outcome: TurnOutcome | None = None
        self._reason: str | None = None
        self._event = asyncio.Event()
        self._waiter = waiter

    def done(self) -> bool:
        """True once the outcome is known."""
        return self._outcome is not None

    @property
    def reason(self) -> str | None:
        """Why the input was ``DROPPED``, when known: ``"cap"`` (the queue's cap),
        ``"interrupt"`` (an ``INTERRUPT`` input replaced it) or ``"session_deleted"`` (its
        session was deleted, here or elsewhere: always known). None otherwise (and for a drop
        another process made, read back from the database)."""
        return self._reason

    def result(self) -> TurnOutcome:
        """The outcome; ``asyncio.InvalidStateError`` if it is not known yet."""
        if self._outcome is None:
            raise asyncio.InvalidStateError(f"input {self.id!r} has no outcome yet")
        return self._outcome

    async def outcome(self) -> TurnOutcome:
        """Wait for the input's outcome (see ``TurnOutcome``).

        With a running dispatcher this waits on an event its transactions and polls set. On a
        dispatcher that is not running (never started, or closed) the input may run in another
        process: this reads the input's state every ``poll_interval`` until it has one. Input
        whose session was deleted ends ``DROPPED`` (``reason`` ``"session_deleted"``). Raises
        ``StoreClosed`` if the store closes before the outcome is known. Cancelling the wait
        changes nothing.
        """
        if self._outcome is None:
            if self._waiter is not None:
                await self._waiter(self)
            else:
                await self._event.wait()
        return self.result()

    async def wait_resolved(self, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (None: no limit) for a resolution or a ``wake()``; True if
        resolved."""
        if self._outcome is not None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        if self._outcome is None:
            self._event.clear()  # woken without an outcome: the next wait waits again
            return False
        return True

    def wake(self) -> None:
        """Wake the waiters without resolving (the dispatcher stopped: they change how they
        wait)."""
        if self._outcome is None:
            self._event.set()

    def resolve(self, outcome: TurnOutcome, reason: str | None = None) -> bool:
        """Set the outcome (and its reason) once; later calls return False and change
        nothing."""
        if self._outcome is not None:
            return False
        self._outcome = outcome
        self._reason = reason
        self.resolutions += 1
        self._event.set()
        return True

    def __repr__(self) -> str:
        state = self._outcome.value if self._outcome is not None else "waiting"
        if self._reason is not None:
            state = f"{state} ({self._reason})"
        return f"<Receipt input={self.id} session={self.session_id} {state}>"


class Ledger:
    """Receipts of one dispatcher not resolved yet, by input id."""

    def __init__(self) -> None:
        self._open: dict[str, Receipt] = {}

    def add(self, receipt: Receipt) -> None:
        self._open[receipt.id] = receipt

    def get(self, input_id: str) -> Receipt | None:
        return self._open.get(input_id)

    def resolve(
        self, input_ids: Iterable[str], outcome: TurnOutcome, reason: str | None = None
    ) -> list[Receipt]:
        """Resolve the receipts of ``input_ids`` (those this ledger holds); return them."""
        resolved = []
        for input_id in input_ids:
            receipt = self._open.pop(input_id, None)
            if receipt is not None and receipt.resolve(outcome, reason):
                resolved.append(receipt)
        return resolved

    def resolve_states(self, states: Mapping[str, str]) -> list[Receipt]:
        """Resolve each input whose recorded ``state`` is final (or ``GONE``); return them."""
        resolved = []
        for input_id, state in states.items():
            outcome = outcome_of(state)
            if outcome is not None:
                resolved += self.resolve((input_id,), outcome, reason_of(state))
        return resolved

    def wake_all(self) -> None:
        """Wake every waiter (see ``Receipt.wake``)."""
        for receipt in self._open.values():
            receipt.wake()

    def open_ids(self) -> list[str]:
        """Input ids whose receipts wait."""
        return list(self._open)

    def __len__(self) -> int:
        return len(self._open)
