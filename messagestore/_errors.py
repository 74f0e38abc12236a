"""Every error messagestore raises on purpose.

``MessageStoreError`` is the root: ``NotFoundError`` (also ``LookupError``: ``MessageNotFound``,
``SessionNotFound``), ``SessionExists``, ``StoreClosed``, ``StoreReadOnly``, ``InvalidMessage``
(also ``ValueError``), ``CorruptRow``, ``SchemaTooNew``, ``SchemaTooOld``, ``WriteFailed``,
``RevisionUnavailable`` (``RevisionCompacted``, ``RevisionFromFuture``), ``QueueFull``,
``WrongEventLoop`` (also ``RuntimeError``), ``DatabaseTimeout`` (also ``TimeoutError``: one
operation outlived the store's ``job_timeout``; ``stored`` says whether it may have been
stored) and ``BackgroundTaskFailed`` (a background loop died: close the store and open it
again). Catch the root for anything deliberate,
``RevisionUnavailable`` to list again with ``snapshot()`` and subscribe from its revision.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackgroundTaskFailed",
    "CorruptRow",
    "DatabaseTimeout",
    "InvalidMessage",
    "MessageNotFound",
    "MessageStoreError",
    "NotFoundError",
    "RevisionCompacted",
    "RevisionFromFuture",
    "RevisionUnavailable",
    "QueueFull",
    "SchemaTooNew",
    "SchemaTooOld",
    "SessionExists",
    "SessionNotFound",
    "StoreClosed",
    "StoreReadOnly",
    "WriteFailed",
    "WrongEventLoop",
]


class MessageStoreError(Exception):
    """Base class of every error the store raises deliberately."""


class NotFoundError(MessageStoreError, LookupError):
    """A row that the call names does not exist (or no longer exists)."""


class MessageNotFound(NotFoundError):
    """No message has this id: it was never created, or it was deleted.

    ``message_id`` is the id; when one call found several missing (``flush_all()``),
    ``message_ids`` names them all, ``message_id`` being the first.
    """

    def __init__(self, message_id: str, *, also: tuple[str, ...] = ()) -> None:
        text = f"message not found: {message_id!r}"
        if also:
            shown = ", ".join(repr(i) for i in also[:10])
            more = f", and {len(also) - 10} more" if len(also) > 10 else ""
            text = f"messages not found: {message_id!r}, {shown}{more}"
        super().__init__(text)
        self.message_id = message_id
        self.message_ids = (message_id, *also)


class SessionNotFound(NotFoundError):
    """No session has this id: it was never created, or it was deleted."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session not found: {session_id!r}")
        self.session_id = session_id


class SessionExists(MessageStoreError):
    """``sessions.create(title, id=...)`` named an id a session already has.

    Nothing was written. ``session_id`` is the id. Raised atomically: of two processes that
    create the same id at once, one gets the session and the other this error.
    """

    def __init__(self, session_id: str) -> None:
        super().__init__(f"a session with id {session_id!r} already exists")
        self.session_id = session_id


class StoreClosed(MessageStoreError):
    """The store was closed; every call after ``close()`` raises this."""

    def __init__(self, what: str = "store") -> None:
        super().__init__(f"{what} is closed")


class StoreReadOnly(MessageStoreError):
    """The store was opened with ``read_only=True``, and the call would write.

    Nothing was buffered or written. ``call`` names the refused method, when known.
    """

    def __init__(self, call: str | None = None) -> None:
        what = "writes are refused" if call is None else f"{call} writes, which is refused"
        super().__init__(
            f"{what}: the store was opened read-only (open_store(..., read_only=True))"
        )
        self.call = call


class InvalidMessage(MessageStoreError, ValueError):
    """Input the store refuses, raised before anything is buffered or written."""


class CorruptRow(MessageStoreError):
    """A stored row cannot be decoded (broken JSON, unknown part type, missing field).

    The message names the row's id so the row can be found and repaired; the store never
    returns half a message.
    """

    def __init__(self, kind: str, row_id: str, reason: str) -> None:
        super().__init__(f"corrupt {kind} row {row_id!r}: {reason}")
        self.row_id = row_id
        self.reason = reason


class SchemaTooNew(MessageStoreError):
    """The database was migrated by a newer messagestore than this one."""


class SchemaTooOld(MessageStoreError):
    """A store opened with ``read_only=True`` found the database's schema older than this
    messagestore's, or none at all.

    A read-only store never migrates: run ``messagestore db upgrade`` (or
    ``messagestore.migrations.upgrade(url)``), or open the store once without ``read_only``.
    """


class WriteFailed(MessageStoreError):
    """A buffered write failed; the buffered state is kept and retried.

    Raised by ``flush()`` / ``flush_all()`` while the failure lasts; ``__cause__`` is the
    database error.
    """


class RevisionUnavailable(MessageStoreError):
    """A subscription cannot resume from its revision: the changes after it cannot be told.

    Raised from ``receive()`` (never from ``subscribe()``), again on every later receive.
    ``since`` is the revision it could not resume from. What to do is the same for every
    subclass: list again with ``store.messages.snapshot()`` (or ``sessions.list()``) and
    subscribe from the snapshot's revision.
    """

    def __init__(self, message: str, since: int) -> None:
        super().__init__(message)
        self.since = since


class RevisionCompacted(RevisionUnavailable):
    """A subscription asked to resume from a revision older than the feed still retains.

    Deleted rows leave tombstones for a retention period; once those older than ``since`` are
    pruned, the changes after ``since`` can no longer be told completely. Start again from
    ``store.messages.snapshot()`` (list, then watch from its revision). A subscription is also
    told this when its store fell so far behind other processes that it can no longer read
    what it missed.
    """

    def __init__(self, since: int, compacted: int) -> None:
        super().__init__(
            f"revision {since} is compacted (changes up to revision {compacted} are no longer "
            "retained); start again from a snapshot",
            since,
        )
        self.compacted = compacted


class RevisionFromFuture(RevisionUnavailable):
    """A subscription asked to resume from a revision the database has not reached.

    The resume point belongs to another database (another deployment, or this one before it
    was reset or restored from a backup): nothing after it can be told. Start again from
    ``store.messages.snapshot()`` (list, then watch from its revision). ``newest`` is the
    database's newest revision when this was found.
    """

    def __init__(self, since: int, newest: int) -> None:
        super().__init__(
            f"revision {since} is newer than the database's newest revision {newest} (a resume "
            "point from another database, or from before this one was reset); start again "
            "from a snapshot",
            since,
        )
        self.newest = newest


class QueueFull(MessageStoreError):
    """A session's pending input reached the dispatcher's ``cap`` under ``DropPolicy.NEW``.

    The newcomer is refused and nothing of it is stored; ``receipt`` is its receipt, already
    resolved with ``TurnOutcome.REJECTED``.
    """

    def __init__(self, session_id: str, cap: int, receipt: Any = None) -> None:
        super().__init__(
            f"session {session_id!r} already has {cap} pending inputs (the cap) and the drop "
            "policy is NEW: input refused"
        )
        self.session_id = session_id
        self.cap = cap
        self.receipt = receipt


class WrongEventLoop(MessageStoreError, RuntimeError):
    """A store was called from an event loop, or a thread, that is not its own.

    A store belongs to the event loop it was opened on: its connections, timers, locks and
    futures live there. A call from anywhere else is refused at once, before anything is
    buffered or handed to the database, so a refused write never commits. To use a store from
    another thread or loop: open it with ``messagestore.sync`` (a blocking store for threads),
    use an adapter (they run their calls on the store's loop), or schedule the call onto the
    store's loop with ``asyncio.run_coroutine_threadsafe(coroutine, store.loop)``.
    ``call`` names the refused method.
    """

    def __init__(self, call: str, detail: str) -> None:
        super().__init__(
            f"{call} was called {detail}. A store belongs to the event loop it was opened on; "
            "from another thread or loop use messagestore.sync (a blocking store), an adapter "
            "(messagestore.adapters: they run on the store's loop), or "
            "asyncio.run_coroutine_threadsafe(coroutine, store.loop)"
        )
        self.call = call


class DatabaseTimeout(MessageStoreError, TimeoutError):
    """The database did not finish one operation (one transaction) within the store's
    ``job_timeout`` (``open_store(..., job_timeout=30)``).

    Something held it: a lock another process or connection keeps, a PostgreSQL server that
    stopped answering, a disk that hangs. The caller stops waiting at the deadline; what the
    database still does with the operation is settled by ``stored``:

    * ``stored is False`` (nearly always): the deadline passed before the commit began. The
      transaction is rolled back and can never commit later; nothing of it was stored.
      Retrying is safe.
    * ``stored is None``: the commit had been sent but was not confirmed within a second
      ``job_timeout`` (PostgreSQL only: a server or network that stopped answering mid-commit).
      The outcome is unknown: read back what the call wrote before retrying it.

    ``timeout`` is the deadline in seconds; ``operation`` names the kind ("write", "read").
    """

    def __init__(self, timeout: float, operation: str, *, stored: bool | None = False) -> None:
        if stored is None:
            outcome = (
                f"its commit was sent but not confirmed within another {timeout:g} s, so it may "
                "or may not be stored: read back what it wrote before retrying"
            )
        else:
            outcome = "it was rolled back and nothing of it was stored: retry it"
        super().__init__(
            f"the database did not finish a {operation} within job_timeout={timeout:g} s (a "
            f"lock held by another process or connection, or a database server that stopped "
            f"answering?); {outcome}, or open the store with a larger job_timeout"
        )
        self.timeout = timeout
        self.operation = operation
        self.stored = stored


class BackgroundTaskFailed(MessageStoreError):
    """A background loop of the store, of a dispatcher or of the database's workers died.

    The flusher, the change feed's reader and listener, tombstone pruning, the writer lease's
    heartbeat, the recovery sweeper, a dispatcher's poll and the database's workers each run
    until their owner closes. One that ends any other way (an exception escaped it, it
    returned, or something else cancelled it) is logged once, and from then on every write
    raises this at once instead of waiting for a loop that is gone, or losing what it would
    have done: ``create``, ``update`` when it must write, ``flush``, ``flush_all``, deletes,
    session writes, a dispatcher's transactions. Reads go on. ``close()`` still closes
    (and still writes what is buffered, if the database can). Close the store and open it
    again.

    ``loop`` names the loop, ``owner`` what ran it ("store", "dispatcher", "database");
    ``__cause__`` is the exception that ended it (None if it returned).
    """

    def __init__(
        self, loop: str, owner: str, how: str = "died", cause: BaseException | None = None
    ) -> None:
        detail = "" if cause is None or how.startswith("was cancelled") else f": {cause!r}"
        super().__init__(
            f"the {owner}'s background loop {loop!r} {how}{detail}; writes are refused "
            "(close the store and open it again)"
        )
        self.loop = loop
        self.owner = owner
        self.how = how
        self.__cause__ = cause

    def again(self) -> BackgroundTaskFailed:
        """A fresh copy to raise (an instance raised again and again would pile up
        tracebacks)."""
        return BackgroundTaskFailed(self.loop, self.owner, self.how, self.__cause__)
