"""Deletes under the write path's rules: buffered changes never resurrect a deleted row.

A delete first marks the buffered entries it targets: from then on their updates are refused
(``MessageNotFound``) and what they had pending is dropped, while a write of them already in
flight still commits (the buffer withholds its announcement). When the delete commits, the
deleted ids are forgotten and remembered as gone, so late updates are refused too. If the
delete fails, the targets take updates again; if it found nothing to delete
(``MessageNotFound``), they are forgotten all the same. The hooks run on the event loop when
the delete's job ends, also when the caller was cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .._changes import Change, Kind
from .._errors import MessageNotFound
from ._buffer import Buffer, Entry

__all__ = ["RunDelete", "delete"]

RunDelete = Callable[
    [Callable[[list[Change]], None], Callable[[BaseException], None]],
    Awaitable[list[Change]],
]
"""The delete job: ``run(done, failed)`` submits it; ``done(changes)`` runs when it commits,
``failed(error)`` when it fails (see ``Repository.delete_message``)."""


async def delete(
    buffer: Buffer, is_target: Callable[[Entry], bool], run: RunDelete
) -> list[Change]:
    """Run the delete job ``run`` with the entries ``is_target`` picks marked as deleting."""
    targets = buffer.begin_delete(is_target)

    def done(changes: list[Change]) -> None:
        buffer.deleted(c.payload.id for c in changes if c.kind is Kind.MESSAGE)
        for entry in targets:
            buffer.forget(entry)

    def failed(error: BaseException) -> None:
        if isinstance(error, MessageNotFound):
            done([])
        else:
            buffer.abort_delete(targets)

    return await run(done, failed)
