"""Rows a write found gone (deleted by another process), each reported once.

A buffered write whose row no longer exists stores nothing. The next ``flush`` of that id
raises ``MessageNotFound`` for it; ``flush_all`` raises one naming every such id; a terminal
``update()`` that waited for the write raises at once (and the id is not reported again);
``close()`` logs what is left, since closing always closes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .._errors import MessageNotFound

__all__ = ["Missing"]

_log = logging.getLogger("messagestore")


class Missing:
    """The ids found gone and not reported yet, in the order they were found."""

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}

    def found(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self._ids[message_id] = None

    def reported(self, message_id: str) -> None:
        """The id was reported otherwise (a waiting writer was told): not again."""
        self._ids.pop(message_id, None)

    def raise_for(self, message_id: str) -> None:
        """Raise ``MessageNotFound`` if the id was found gone and not reported yet."""
        if message_id in self._ids:
            del self._ids[message_id]
            raise MessageNotFound(message_id)

    def raise_all(self) -> None:
        """Raise one ``MessageNotFound`` naming every id not reported yet, if any."""
        missing = self._take()
        if missing:
            raise MessageNotFound(missing[0], also=missing[1:])

    def log_all(self) -> None:
        """Log every id not reported yet (on close)."""
        missing = self._take()
        if missing:
            _log.warning(
                "messagestore: %d buffered message(s) were deleted by another process before "
                "their last changes were written: %s",
                len(missing),
                ", ".join(missing[:10]),
            )

    def _take(self) -> tuple[str, ...]:
        missing = tuple(self._ids)
        self._ids.clear()
        return missing
