"""``SyncStore`` and the blocking ``open_store``: the asyncio store behind a loop thread.

``open_store()`` starts a ``LoopThread`` (``_loop``) that opens the ordinary asyncio store on its
own loop; ``SyncStore`` and its services turn each call into a blocking one there, so every
guarantee of the asyncio store holds. ``close()`` (or leaving ``with``) closes the store on the
loop (flushing), ends its blocking subscriptions after a drain and joins the thread. An unclosed
store is closed by a finalizer (``ResourceWarning``) or the ``atexit`` hook.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

from .. import DEFAULT_DEBOUNCE, DEFAULT_JOB_TIMEOUT, DEFAULT_RETENTION, RecoveryReport, Store, Tx
from .. import open_store as open_async_store
from ._loop import LoopThread
from ._services import Subscriptions, SyncMessageService, SyncSessionService

__all__ = ["SyncStore", "open_store"]

_T = TypeVar("_T")


class SyncStore:
    """An open blocking store: ``sessions``, ``messages``, ``close()``; see ``open_store``."""

    def __init__(
        self, runner: LoopThread[Store], store: Store, subscriptions: Subscriptions
    ) -> None:
        self._runner = runner
        self._store = store
        self.sessions = SyncSessionService(runner, store.sessions, subscriptions, self)
        self.messages = SyncMessageService(runner, store.messages, subscriptions, self)
        self._finalizer = weakref.finalize(self, _collected, runner, store.url)
        self._finalizer.atexit = False  # the exit hook of LoopThread closes it, and waits

    @property
    def url(self) -> str:
        """The database URL the store opened."""
        return self._store.url

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or the store was closed at exit)."""
        return not self._runner.is_open

    @property
    def writer_id(self) -> str | None:
        """This store's writer-lease id, stamped on every message it writes."""
        return self._store.writer_id

    @property
    def thread(self) -> threading.Thread:
        """The thread that runs the store's event loop (for inspection)."""
        return self._runner.thread

    def transaction(self, job: Callable[[Tx], _T], *, write: bool = True) -> _T:
        """Run ``job(tx)`` as one transaction of the store and return its result, once it
        committed (``Store.transaction``: ``job`` runs on the store's database worker)."""
        return self._runner.call(self._store.transaction, job, write=write)

    def recover(self) -> RecoveryReport:
        """Repair messages left half-written by stores that stopped (``Store.recover``)."""
        return self._runner.call(self._store.recover)

    def close(self) -> None:
        """Flush everything, end every subscription, stop and join the loop thread. Idempotent.

        Safe from any thread but the store's own loop thread. If the final flush fails, the
        store is closed all the same and the failure is raised (once). If the waiting thread
        is interrupted, the loop thread finishes closing by itself; ``close()`` again waits.
        """
        self._finalizer.detach()
        self._runner.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SyncStore {state} {self.url!r}>"


def open_store(
    url: str | None = None,
    *,
    debounce: float = DEFAULT_DEBOUNCE,
    feed_retention: timedelta | float = DEFAULT_RETENTION,
    read_only: bool = False,
    timeout: float | None = None,
    job_timeout: float = DEFAULT_JOB_TIMEOUT,
) -> SyncStore:
    """Open the store at ``url`` behind a thread of its own; every method blocks.

    ``url``, ``debounce``, ``feed_retention``, ``read_only`` and ``job_timeout`` are those of
    the asyncio ``messagestore.open_store`` (a transaction that misses ``job_timeout`` raises
    ``DatabaseTimeout`` here too). ``timeout`` bounds each call (seconds, ``None`` waits as long
    as it takes): a call that exceeds it is cancelled on the loop — with the asyncio store's
    guarantees under cancellation — and raises ``TimeoutError``. Use it as
    ``with open_store() as store:`` or call ``close()``. Errors while opening (a bad URL, an
    unreachable server) are raised here, and the thread is gone by then.
    """
    subscriptions: Subscriptions = weakref.WeakSet()

    async def open_() -> Store:
        return await open_async_store(
            url,
            debounce=debounce,
            feed_retention=feed_retention,
            read_only=read_only,
            job_timeout=job_timeout,
        )

    async def close(store: Store) -> None:
        try:
            await store.close()
        finally:
            for subscription in list(subscriptions):
                subscription.drain()

    runner = LoopThread(open_, close, timeout=timeout)
    store = runner.start()
    return SyncStore(runner, store, subscriptions)


def _collected(runner: LoopThread[Store], url: str) -> None:
    """The store was garbage-collected unclosed: close it in the background."""
    if runner.is_open:
        runner.request_close()
        warnings.warn(
            f"unclosed blocking store {url!r} was closed when collected; use `with` or close()",
            ResourceWarning,
            stacklevel=1,
        )
