"""Completing a future that may be done already."""

from __future__ import annotations

import asyncio

__all__ = ["resolve"]


def resolve(future: asyncio.Future[None]) -> None:
    """Complete ``future`` with None unless it is done (or cancelled) already: for signals
    that may come twice, or after their waiter gave up. Call it in the future's loop
    (``loop.call_soon_threadsafe(resolve, future)`` from another thread)."""
    if not future.done():
        future.set_result(None)
