"""messagestore: persist streaming agent-conversation messages and announce every change.

Open a store with :func:`open_store`; use ``store.sessions`` and ``store.messages``. The write
path, the broker and the schema are described in the README and in each module's docstring.
"""

from ._config import default_database_path, default_url
from ._database._repository import Snapshot
from ._delta import MessageDelta
from ._dispatch import (
    Dispatcher,
    DispatcherStats,
    DropPolicy,
    QueueConfig,
    QueueMode,
    Receipt,
    Steering,
    Turn,
    TurnInput,
    TurnOutcome,
    inputs_dropped,
    turn_failed,
    turn_started,
)
from ._errors import (
    BackgroundTaskFailed,
    CorruptRow,
    InvalidMessage,
    MessageNotFound,
    MessageStoreError,
    NotFoundError,
    QueueFull,
    RevisionCompacted,
    RevisionFromFuture,
    RevisionUnavailable,
    SchemaTooNew,
    SessionNotFound,
    StoreClosed,
    WriteFailed,
    WrongEventLoop,
)
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
from ._store import DEFAULT_DEBOUNCE, Store, open_store
from ._writes._signals import batch_written, write_failed

__all__ = [
    "DEFAULT_DEBOUNCE",
    "BackgroundTaskFailed",
    "Binary",
    "CorruptRow",
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
    "Reasoning",
    "RecoveryReport",
    "RevisionCompacted",
    "RevisionFromFuture",
    "RevisionUnavailable",
    "Role",
    "SchemaTooNew",
    "Session",
    "SessionNotFound",
    "SessionService",
    "Snapshot",
    "Store",
    "StoreClosed",
    "Text",
    "ToolCall",
    "ToolResult",
    "WriteFailed",
    "WrongEventLoop",
    "batch_written",
    "default_database_path",
    "default_url",
    "open_store",
    "write_failed",
    # the dispatcher (issue 12)
    "Dispatcher",
    "DispatcherStats",
    "DropPolicy",
    "QueueConfig",
    "QueueFull",
    "QueueMode",
    "Receipt",
    "Steering",
    "Turn",
    "TurnInput",
    "TurnOutcome",
    "inputs_dropped",
    "turn_failed",
    "turn_started",
]
