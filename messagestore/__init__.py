"""messagestore: persist streaming agent-conversation messages and announce every change.

Open a store with :func:`open_store`; use ``store.sessions`` and ``store.messages``. How it is
built (layers, the write path, the feed, the dispatcher): docs/ARCHITECTURE.md. The dispatcher
lives in :mod:`messagestore.dispatch`.
"""

from typing import Any

from ._config import default_database_path, default_url
from ._database._repository import Snapshot
from ._database._tx import Tx
from ._delta import MessageDelta
from ._deprecation import warn_deprecated
from ._errors import (
    BackgroundTaskFailed,
    CorruptRow,
    DatabaseTimeout,
    InvalidMessage,
    MessageNotFound,
    MessageStoreError,
    NotFoundError,
    QueueFull,
    RevisionCompacted,
    RevisionFromFuture,
    RevisionUnavailable,
    SchemaTooNew,
    SchemaTooOld,
    SessionExists,
    SessionNotFound,
    StoreClosed,
    StoreReadOnly,
    WriteFailed,
    WrongEventLoop,
)
from ._feed._retention import DEFAULT_RETENTION
from ._feed._subscription import FeedSubscription
from ._messages import MessageService, MessageStats
from ._model import (
    Binary,
    Finish,
    FinishReason,
    ImageURL,
    Message,
    Part,
    Reasoning,
    Role,
    Session,
    Text,
    ToolCall,
    ToolResult,
)
from ._recovery._sweep import RecoveryReport
from ._sessions import SessionService
from ._store import DEFAULT_DEBOUNCE, DEFAULT_JOB_TIMEOUT, Store, database_url, open_store
from ._writes._signals import batch_written, write_failed

__all__ = [
    "DEFAULT_DEBOUNCE",
    "DEFAULT_JOB_TIMEOUT",
    "BackgroundTaskFailed",
    "DEFAULT_RETENTION",
    "Binary",
    "CorruptRow",
    "DatabaseTimeout",
    "FeedSubscription",
    "Finish",
    "FinishReason",
    "ImageURL",
    "InvalidMessage",
    "Message",
    "MessageDelta",
    "MessageNotFound",
    "MessageService",
    "MessageStats",
    "MessageStoreError",
    "NotFoundError",
    "Part",
    "QueueFull",
    "Reasoning",
    "RecoveryReport",
    "RevisionCompacted",
    "RevisionFromFuture",
    "RevisionUnavailable",
    "Role",
    "SchemaTooNew",
    "SchemaTooOld",
    "Session",
    "SessionExists",
    "SessionNotFound",
    "SessionService",
    "Snapshot",
    "Store",
    "StoreClosed",
    "StoreReadOnly",
    "Text",
    "ToolCall",
    "ToolResult",
    "Tx",
    "WriteFailed",
    "WrongEventLoop",
    "batch_written",
    "database_url",
    "default_database_path",
    "default_url",
    "open_store",
    "write_failed",
]


# Moved to ``messagestore.dispatch``; still reachable here, with a DeprecationWarning, for one
# release. Kept out of ``__all__`` so that ``from messagestore import *`` takes none of them
# (and warns about nothing).
_MOVED_TO_DISPATCH = frozenset(
    {
        "Dispatcher",
        "DispatcherStats",
        "DropPolicy",
        "QueueConfig",
        "QueueMode",
        "Receipt",
        "Steering",
        "Turn",
        "TurnInput",
        "TurnOutcome",
        "inputs_dropped",
        "turn_failed",
        "turn_started",
    }
)


def __getattr__(name: str) -> Any:
    """``messagestore.Dispatcher`` and the other dispatcher names: deprecated aliases of
    ``messagestore.dispatch``'s (PEP 562), each access warned about."""
    if name in _MOVED_TO_DISPATCH:
        warn_deprecated(
            f"messagestore.{name} moved to messagestore.dispatch: import it with "
            f"`from messagestore.dispatch import {name}` (the old name goes in the next release)"
        )
        from . import dispatch

        return getattr(dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
