"""What this process has already read of streaming messages, so the next read fetches less.

Reading a streaming message walks every append row since its stream opened (``_appends``).
Append rows never change once committed and a base is identified by its revision, so this cache
keeps, per message, the text appended since its base through the revision the read's snapshot
reached; a later read with the same base walks only the newer rows. Only read-only jobs use it
(a write could roll back); a reader with an older snapshot ignores newer entries. Thread-safe,
bounded, least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

__all__ = ["CachedStream", "StreamCache"]

Slot = tuple[int, int]
"""(part index, field code) of a streamed field (see ``_appends``)."""


@dataclass(frozen=True, slots=True)
class CachedStream:
    """One message's appends as a read saw them.

    ``base`` is the revision of the row they apply to and ``appends_from`` the stream's first
    revision; together they say the entry belongs to this stream of this row. ``through``:
    every append row up to this revision was applied. ``texts`` is the appended text per
    slot; ``revision`` and ``updated_at`` are those of the newest append (0 / None if none).
    """

    base: int
    appends_from: int
    through: int
    texts: dict[Slot, str]
    revision: int
    updated_at: datetime | None

    @property
    def chars(self) -> int:
        return sum(len(text) for text in self.texts.values())


class StreamCache:
    """Per message ``seq``, the newest ``CachedStream`` any read produced (see module doc)."""

    def __init__(self, *, max_messages: int = 4096, max_chars: int = 64 * 1024 * 1024) -> None:
        if max_messages < 1 or max_chars < 1:
            raise ValueError("max_messages and max_chars must be positive")
        self._max_messages = max_messages
        self._max_chars = max_chars
        self._entries: OrderedDict[int, tuple[CachedStream, int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        return self._chars

    def get(self, seq: int, base: int, appends_from: int, horizon: int) -> CachedStream | None:
        """The entry for this stream of this row, if a read at ``horizon`` may start from it."""
        with self._lock:
            found = self._entries.get(seq)
            if found is None:
                return None
            entry = found[0]
            if entry.base != base or entry.appends_from != appends_from or entry.through > horizon:
                return None
            self._entries.move_to_end(seq)
            return entry

    def put(self, seq: int, entry: CachedStream) -> None:
        """Keep ``entry`` unless the cache holds one at least as new (a newer row, or the same
        stream read through a later revision)."""
        chars = entry.chars
        if chars > self._max_chars:
            return
        with self._lock:
            found = self._entries.get(seq)
            if found is not None:
                old = found[0]
                if old.base > entry.base:  # a read with an older snapshot: keep the newer row's
                    return
                same_stream = old.base == entry.base and old.appends_from == entry.appends_from
                if same_stream and old.through >= entry.through:
                    return
                self._chars -= found[1]
            self._entries[seq] = (entry, chars)
            self._entries.move_to_end(seq)
            self._chars += chars
            while len(self._entries) > self._max_messages or self._chars > self._max_chars:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._chars -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0
