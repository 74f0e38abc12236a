"""What the change feed's reader already holds of streaming messages, so a change costs its size.

``ReadStates`` keeps, per unfinished message, the state the last read produced and the revision
of the row it was built on; the next read decodes only the append rows written since and
applies them (``_revisions.read_changes``), after checking (one indexed column) that the row
still has that revision. One per feed, used by one read at a time; bounded (least recently read
forgotten first; finished at once). Details: docs/MODULES.md.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .._model import Message

__all__ = ["HeldState", "ReadStates"]

_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class HeldState:
    """One message as the last read left it: ``message`` is its state at ``ReadStates.through``,
    built on the row whose revision is ``base``. Shared with subscribers: never changed."""

    base: int
    message: Message


class ReadStates:
    """Per message ``seq``, the state the feed's last read produced (see the module doc)."""

    def __init__(self, remembered: int = _REMEMBERED) -> None:
        if remembered < 1:
            raise ValueError("remembered must be positive")
        self._remembered = remembered
        self._held: OrderedDict[int, HeldState] = OrderedDict()
        self.through: int | None = None
        """Every append row up to this revision was applied to the held states (None: none
        was read yet)."""

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, seq: object) -> bool:
        return seq in self._held

    def start(self, after: int) -> int:
        """A read of the changes after ``after`` begins: the revision after which append rows
        must be read (``through``, which is at most ``after``, so the held states catch up on
        commits the feed published without reading them). A read that starts before
        ``through`` cannot use what is held: everything is forgotten."""
        through = self.through
        if through is None or through > after:
            self.clear()
            return after
        return through

    def get(self, seq: int) -> HeldState | None:
        return self._held.get(seq)

    def keep(self, seq: int, base: int, message: Message) -> None:
        """Hold ``message`` (the state at the end of this read, built on row revision ``base``);
        a finished message is forgotten instead."""
        if message.is_finished:
            self._held.pop(seq, None)
            return
        self._held[seq] = HeldState(base, message)
        self._held.move_to_end(seq)
        if len(self._held) > self._remembered:
            self._held.popitem(last=False)

    def forget(self, seq: int) -> None:
        self._held.pop(seq, None)

    def clear(self) -> None:
        self._held.clear()
        self.through = None
