"""Small helpers shared by the tests (fault injection into the write path)."""

from __future__ import annotations

import asyncio
from typing import Any


def failed_future(error: BaseException) -> asyncio.Future[Any]:
    """A future that already failed with ``error``: what a write job that failed returns."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future
