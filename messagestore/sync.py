"""The blocking twin of messagestore, for scripts, Flask, Django and other threaded code.

::

    from messagestore.sync import open_store

    with open_store() as store:                       # same URL and debounce as the asyncio one
        session = store.sessions.create("chat")
        for event in store.messages.subscribe():      # a blocking iterator of pubsub.Event
            ...

It is the asyncio store on one event loop in a thread the store owns: every method keeps its
asyncio signature and contract, and blocks. Threads, timeouts, closing and ``fork()``: README,
"Blocking API"; in full: docs/MODULES.md.
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
