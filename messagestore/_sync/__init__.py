"""The blocking twin of the store: one event loop in a thread the store owns (see ``sync``)."""

from ._loop import EXIT_TIMEOUT
from ._services import SyncMessageService, SyncSessionService
from ._store import SyncStore, open_store
from ._subscription import SyncSubscription

__all__ = [
    "EXIT_TIMEOUT",
    "SyncMessageService",
    "SyncSessionService",
    "SyncStore",
    "SyncSubscription",
    "open_store",
]
