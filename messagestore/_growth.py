"""Streamed fields and the pure-append test: what a change appended, if that is all it did.

A streamed part grows at the end of one field — ``Text.text``, ``Reasoning.thinking``,
``ToolCall.input`` — while its other fields stay put. The incremental writes store just what
grew (``_database._appends``) and the wire deltas send just that (``_delta``); both ask the
questions here, so both agree on what a pure append is.

Timestamps count as unchanged only when both the instant and the UTC offset are equal: the
stored and the JSON forms write the offset, so equal instants with different offsets are
different states.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from ._model import Finish, Message, Part, Reasoning, Text, ToolCall

__all__ = ["FIELD_OF", "INPUT", "TEXT", "THINKING", "Append", "diff", "grow", "grown"]

TEXT, THINKING, INPUT = 0, 1, 2
"""Field codes of the streamed fields: ``Text.text``, ``Reasoning.thinking``,
``ToolCall.input``."""

FIELD_OF: dict[type, int] = {Text: TEXT, Reasoning: THINKING, ToolCall: INPUT}
"""The field code of each kind of part that has a streamed field."""

Append = tuple[int, int, str]
"""(part index, field code, appended text)."""


def diff(written: Message, state: Message) -> list[Append] | None:
    """The appends that turn ``written`` into ``state``, or None if it is not a pure append.

    Pure append: same parts in the same places, every part identical except that streamed
    fields may have grown at their end; same model, provider and summary flag. The other
    top-level fields (``updated_at``, ...) are not compared.
    """
    old_parts, new_parts = written.parts, state.parts
    if (
        len(old_parts) != len(new_parts)
        or state.model != written.model
        or state.provider != written.provider
        or state.is_summary_message != written.is_summary_message
    ):
        return None
    appends: list[Append] = []
    for index, (old, new) in enumerate(zip(old_parts, new_parts, strict=True)):
        if new is old:
            continue
        text = grown(old, new)
        if text is None:
            return None
        if text:
            appends.append((index, FIELD_OF[type(new)], text))
    return appends


def grown(old: Part, new: Part) -> str | None:
    """What ``new`` appended to the streamed field of ``old`` (``""`` when the parts are the
    same), or None when anything else differs: the kind, another field, the start of the
    streamed field."""
    if type(new) is not type(old):
        return None
    if isinstance(new, Text) and isinstance(old, Text):
        return _tail(old.text, new.text)
    if isinstance(new, Reasoning) and isinstance(old, Reasoning):
        same = (
            old.signature == new.signature
            and _same_time(old.started_at, new.started_at)
            and _same_time(old.finished_at, new.finished_at)
        )
        return _tail(old.thinking, new.thinking) if same else None
    if isinstance(new, ToolCall) and isinstance(old, ToolCall):
        same = (
            old.id == new.id
            and old.name == new.name
            and old.finished == new.finished
            and old.provider_executed == new.provider_executed
        )
        return _tail(old.input, new.input) if same else None
    if new != old:
        return None
    if isinstance(new, Finish) and isinstance(old, Finish) and not _same_time(old.time, new.time):
        return None
    return ""


def grow(part: Part, text: str) -> Part:
    """``part`` with ``text`` appended to its streamed field (parts are frozen: a new part).

    Raises ``ValueError`` for a kind of part without a streamed field.
    """
    if isinstance(part, Text):
        return Text(part.text + text)
    if isinstance(part, Reasoning):
        return dataclasses.replace(part, thinking=part.thinking + text)
    if isinstance(part, ToolCall):
        return dataclasses.replace(part, input=part.input + text)
    raise ValueError(f"a {type(part).__name__} part has no streamed field to append to")


def _tail(old: str, new: str) -> str | None:
    if len(new) < len(old) or not new.startswith(old):
        return None
    return new[len(old) :]


def _same_time(old: datetime | None, new: datetime | None) -> bool:
    if old is None or new is None:
        return old is new
    return old == new and old.utcoffset() == new.utcoffset()
