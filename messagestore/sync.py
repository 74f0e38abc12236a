"""The blocking twin of messagestore, for scripts, Flask, Django and other threaded code.

::

    from messagestore.sync import open_store

    with open_store() as store:                       # same URL and debounce as the asyncio one
        session = store.sessions.create("chat")
        reply = store.messages.create(session.id, role="assistant")
        reply.append_text("Hello")
        store.messages.update(reply)                  # returns at once: buffered
        for event in store.messages.subscribe():      # a blocking iterator of pubsub.Event
            ...

It is the asyncio store, run on one event loop in a thread that the store owns: every method of
``store.sessions`` and ``store.messages`` has its asyncio signature, blocks until the asyncio
call is done, and keeps its contract (``update()`` copies the message before it returns,
terminal changes are written before it returns, errors keep their type: ``MessageNotFound``,
``InvalidMessage``, ...).

Threads. Any number of threads may call one store at once; their calls interleave on the
loop as concurrent tasks would. The store's own loop thread must not call it (a blinker
receiver runs there): that raises ``RuntimeError`` instead of waiting for itself forever.

Giving up. ``open_store(timeout=...)`` bounds every call; a caller that stops waiting — the
timeout elapsed (``TimeoutError``) or ``KeyboardInterrupt`` hit it — cancels the call on the
loop, exactly like cancelling the task that awaited it, and the store goes on working. The
asyncio store's guarantees under cancellation apply: a terminal write that started completes
and is announced. A subscription's ``get(timeout=...)`` never cancels: the event it was
waiting for is returned by the next ``get()``.

Closing. ``close()`` flushes, ends the subscriptions (each still returns what the store
announced before it closed), stops the loop and joins the thread; afterwards every call raises
``StoreClosed``. A store left open at interpreter exit is closed by an ``atexit`` hook (its
buffer flushed), waiting at most ``EXIT_TIMEOUT`` seconds; the thread is a daemon, so the
interpreter never hangs on it. A store garbage-collected unclosed is closed in the background
with a ``ResourceWarning``.

Processes. A store does not survive ``fork()``: its loop thread exists only in the parent. In a
forked child (gunicorn workers, multiprocessing with the fork start method) every call raises
``RuntimeError``; open the store in the child, after the fork (for example in a post-fork hook,
or lazily on first use).
"""

from ._sync import (
    EXIT_TIMEOUT,
    SyncMessageService,
    SyncSessionService,
    SyncStore,
    SyncSubscription,
    open_store,
)

__all__ = [
    "EXIT_TIMEOUT",
    "SyncMessageService",
    "SyncSessionService",
    "SyncStore",
    "SyncSubscription",
    "open_store",
]
