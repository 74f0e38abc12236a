"""Run a history mutation to its outcome even when the caller is cancelled.

A caller cancelled while a write is in flight cannot tell whether it happened. The OpenAI
Agents SDK's own sessions therefore let the mutation finish, then raise the cancellation: the
write either happened completely or not at all, and the caller learns that it was cancelled.
The adapters do the same. The mutation runs in a task that this function awaits until it is
done, however often the caller is cancelled meanwhile; it is never left running on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_to_outcome"]

T = TypeVar("T")


async def run_to_outcome(mutation: Coroutine[Any, Any, T]) -> T:
    """Await ``mutation`` to its end; a cancellation received meanwhile is raised after it."""
    task = asyncio.ensure_future(mutation)
    cancellation: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            if cancellation is None:
                cancellation = exc
    try:
        result = task.result()
    except BaseException:
        if cancellation is not None:
            raise cancellation from None
        raise
    if cancellation is not None:
        raise cancellation
    return result
