"""The dispatcher as the HTTP routes see it: submit input, stop a session's turn.

The routes ``POST /api/sessions/{id}/inputs`` and ``POST /api/sessions/{id}/stop`` talk only
to :class:`Inbound`, so the rest of the server never depends on how input becomes turns.
:func:`dispatcher_inbound` adapts a ``messagestore.dispatch.Dispatcher``: its ``submit``
commits the input and returns a receipt, ``stop`` cancels the running turn and
discards pending input. A dispatcher that was never started still takes input (the input is
committed and a running dispatcher on the same database, in this process or another, runs it),
which is what a server without ``--demo`` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

__all__ = ["Accepted", "Inbound", "dispatcher_inbound"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """An input the dispatcher committed."""

    input_id: str
    session_id: str
    duplicate: bool
    submitted_at: datetime | None


class Inbound(Protocol):
    """Where user input goes."""

    async def submit(
        self,
        session_id: str,
        text: str,
        *,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Accepted:
        """Commit one input for the session (durable when it returns)."""
        ...

    async def stop(self, session_id: str) -> bool:
        """Cancel the session's running turn and discard its pending input; False if there
        was nothing to cancel."""
        ...


class DispatcherLike(Protocol):
    """What the input routes need of ``messagestore.dispatch.Dispatcher``."""

    async def submit(
        self,
        session_id: str,
        text: str,
        *,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Any: ...

    async def stop(self, session_id: str) -> bool: ...


class _DispatcherInbound:
    def __init__(self, dispatcher: DispatcherLike) -> None:
        self._dispatcher = dispatcher

    async def submit(
        self,
        session_id: str,
        text: str,
        *,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Accepted:
        receipt = await self._dispatcher.submit(session_id, text, key=key, metadata=metadata)
        return Accepted(
            input_id=str(receipt.id),
            session_id=session_id,
            duplicate=bool(getattr(receipt, "duplicate", False)),
            submitted_at=getattr(receipt, "submitted_at", None),
        )

    async def stop(self, session_id: str) -> bool:
        return bool(await self._dispatcher.stop(session_id))


def dispatcher_inbound(dispatcher: DispatcherLike) -> Inbound:
    """``dispatcher`` (a ``messagestore.dispatch.Dispatcher``) as the routes' :class:`Inbound`."""
    return _DispatcherInbound(dispatcher)
