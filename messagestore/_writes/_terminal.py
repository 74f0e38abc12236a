"""What makes a change terminal: it must be written and announced before ``update()`` returns.

A change is terminal, judged against the last *written* state, when the message became
finished, the number of tool calls changed, a tool call's ``finished`` flipped, or reasoning's
``finished_at`` became set. Everything else (text, thinking, tool-call input growing) is an
intermediate state that may wait for the next tick.
"""

from __future__ import annotations

from typing import NamedTuple

from .._model import Finish, Message, Reasoning, ToolCall

__all__ = ["Marks", "marks_of"]


class Marks(NamedTuple):
    """The facts about a message that decide terminal-ness; compared with ``!=``."""

    finished: bool
    reasoning_finished: bool
    tool_calls: tuple[tuple[str, bool], ...]

    def is_terminal_after(self, written: Marks | None) -> bool:
        """True if going from ``written`` to these marks is a terminal change."""
        if written is None:
            return self.finished or self.reasoning_finished or bool(self.tool_calls)
        if self.finished and not written.finished:
            return True
        if self.reasoning_finished and not written.reasoning_finished:
            return True
        return self.tool_calls != written.tool_calls


def marks_of(message: Message) -> Marks:
    """One pass over the parts."""
    finished = reasoning_finished = False
    calls: list[tuple[str, bool]] = []
    for part in message.parts:
        if isinstance(part, ToolCall):
            calls.append((part.id, part.finished))
        elif isinstance(part, Finish):
            finished = True
        elif isinstance(part, Reasoning):
            reasoning_finished = part.finished_at is not None
    return Marks(finished, reasoning_finished, tuple(calls))
