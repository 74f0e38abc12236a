"""A store belongs to one event loop; every public entry point checks that it is called there.

A store's connections, timers, locks and futures belong to the loop it was opened on. Awaited
from another loop, a call would hand its job to the database and then fail waiting for a
future of the wrong loop — after the write was already on its way. So each public method
checks first, before it buffers or submits anything, and raises ``WrongEventLoop`` naming the
call and the remedy. The check is one C call and one identity comparison, cheap enough for
``update()``, which runs once per streamed token.
"""

from __future__ import annotations

import asyncio
import threading

from ._errors import WrongEventLoop

__all__ = ["check_loop", "running_loop", "wrong_loop"]

running_loop = asyncio._get_running_loop
"""The event loop running in this thread, or None (no exception, unlike ``get_running_loop``)."""


def check_loop(loop: asyncio.AbstractEventLoop, call: str) -> None:
    """Raise ``WrongEventLoop`` for ``call`` unless it runs in ``loop``."""
    if running_loop() is not loop:
        raise wrong_loop(loop, call)


def wrong_loop(loop: asyncio.AbstractEventLoop, call: str) -> WrongEventLoop:
    """The error for ``call`` made outside ``loop`` (the store's), saying where it was made."""
    running = running_loop()
    thread = threading.current_thread().name
    if loop.is_closed():
        detail = "after the store's event loop was closed"
    elif running is None:
        detail = f"from thread {thread!r}, outside the store's event loop (no loop runs there)"
    else:
        detail = f"from an event loop that is not the store's (in thread {thread!r})"
    return WrongEventLoop(call, detail)
