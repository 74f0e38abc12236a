"""The blocking faces of ``SessionService`` and ``MessageService``.

Each method has the signature of its asyncio twin (``tests/sync/test_blocking_twin.py`` checks
that every public method of the asyncio services has one here, with the same parameters) and
runs that twin on the store's event-loop thread with ``LoopThread.call``. So errors keep their type,
validation happens where it always does, and ``update()`` has copied the message before it
returns, exactly as the asyncio ``update()`` has: the caller may go on mutating it at once.
"""

from __future__ import annotations

import builtins
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from pubsub import Broker

from .. import (
    FeedSubscription,
    Message,
    MessageService,
    MessageStats,
    Part,
    Role,
    Session,
    SessionService,
    Snapshot,
    Tx,
)
from ._loop import LoopThread
from ._subscription import SyncSubscription

__all__ = ["SyncMessageService", "SyncSessionService", "Subscriptions"]

T = TypeVar("T", Message, Session)
R = TypeVar("R")


class _Subscribe(Protocol[T]):
    def __call__(self) -> FeedSubscription[T]: ...


# Every SyncSubscription of one store, drained on the loop thread when the store closes.
Subscriptions = weakref.WeakSet[SyncSubscription[Any]]


class SyncSessionService:
    """Sessions of a blocking store. Get it as ``store.sessions``."""

    def __init__(
        self,
        runner: LoopThread[Any],
        service: SessionService,
        subscriptions: Subscriptions,
        owner: object,
    ) -> None:
        self._runner = runner
        self._service = service
        self._subscriptions = subscriptions
        self._owner = owner  # the store: alive while any of its parts is

    @property
    def broker(self) -> Broker[Session]:
        """Deprecated, and gone in the next release (``SessionService.broker``): use
        ``subscribe()`` for events."""
        return self._service.broker

    def create(
        self,
        title: str,
        *,
        parent_session_id: str | None = None,
        id: str | None = None,
    ) -> Session:
        """Create a session; ``title`` may be empty but must be a string. ``id``: a chosen id
        (``SessionExists`` when taken), as ``SessionService.create`` takes it."""
        return self._runner.call(
            self._service.create, title, parent_session_id=parent_session_id, id=id
        )

    def get(self, session_id: str) -> Session:
        """The session, or ``SessionNotFound``."""
        return self._runner.call(self._service.get, session_id)

    def list(self) -> builtins.list[Session]:
        """Every session, newest first."""
        return self._runner.call(self._service.list)

    def save(self, session: Session) -> Session:
        """Store the editable fields (title, tokens, cost, summary id); return the stored row."""
        return self._runner.call(self._service.save, session)

    def delete(self, session_id: str) -> None:
        """Delete the session and its messages; each message gets its ``DELETED`` event."""
        self._runner.call(self._service.delete, session_id)

    def subscribe(
        self, *, buffer_size: int | None = None, since: int | None = None
    ) -> SyncSubscription[Session]:
        """Receive ``CREATED`` / ``UPDATED`` / ``DELETED`` events for sessions, blocking;
        ``since`` replays from a revision first (see ``SessionService.subscribe``)."""
        service = self._service
        return self._runner.run(
            _subscribe,
            self._runner,
            lambda: service.subscribe(buffer_size=buffer_size, since=since),
            self._subscriptions,
            self._owner,
        )


class SyncMessageService:
    """Messages of a blocking store. Get it as ``store.messages``."""

    def __init__(
        self,
        runner: LoopThread[Any],
        service: MessageService,
        subscriptions: Subscriptions,
        owner: object,
    ) -> None:
        self._runner = runner
        self._service = service
        self._subscriptions = subscriptions
        self._owner = owner  # the store: alive while any of its parts is

    # -- events ----------------------------------------------------------------------------------

    @property
    def broker(self) -> Broker[Message]:
        """Deprecated, and gone in the next release (``MessageService.broker``): use
        ``stats().broker`` for its counters and ``subscribe()`` for events."""
        return self._service.broker

    def subscribe(
        self,
        *,
        buffer_size: int | None = None,
        session_id: str | None = None,
        since: int | None = None,
    ) -> SyncSubscription[Message]:
        """Receive ``CREATED`` / ``UPDATED`` / ``DELETED`` events for messages, blocking.

        ``session_id`` limits them to one session; ``since`` replays from a revision first
        (see ``MessageService.subscribe``). A reader that falls behind is brought back to the
        newest state: late, never stale.
        """
        service = self._service
        return self._runner.run(
            _subscribe,
            self._runner,
            lambda: service.subscribe(buffer_size=buffer_size, session_id=session_id, since=since),
            self._subscriptions,
            self._owner,
        )

    def snapshot(self, session_id: str | None = None) -> Snapshot:
        """The stored messages and the revision they are consistent at (list, then watch)."""
        return self._runner.call(self._service.snapshot, session_id)

    # -- writes ----------------------------------------------------------------------------------

    def create(
        self,
        session_id: str,
        *,
        role: Role | str,
        parts: Iterable[Part] = (),
        model: str = "",
        provider: str = "",
        is_summary_message: bool = False,
    ) -> Message:
        """Create and store a message now; publishes ``CREATED`` (must-deliver)."""
        return self._runner.call(
            self._service.create,
            session_id,
            role=role,
            parts=parts,
            model=model,
            provider=provider,
            is_summary_message=is_summary_message,
        )

    def create_in(
        self,
        tx: Tx,
        session_id: str,
        *,
        role: Role | str,
        parts: Iterable[Part] = (),
        model: str = "",
        provider: str = "",
        is_summary_message: bool = False,
    ) -> Message:
        """Create a message inside ``tx``, a running ``SyncStore.transaction`` (called from its
        job, on the database's worker, like ``MessageService.create_in``; nothing waits)."""
        return self._service.create_in(
            tx,
            session_id,
            role=role,
            parts=parts,
            model=model,
            provider=provider,
            is_summary_message=is_summary_message,
        )

    def update(self, message: Message) -> None:
        """Accept the message's current state (the asyncio ``update()`` contract).

        Intermediate changes are buffered and this returns at once; terminal ones are written
        and announced before it returns. The message is copied before it returns.
        """
        self._runner.call(self._service.update, message)

    def update_with(self, messages: Sequence[Message], job: Callable[[Tx], R]) -> R:
        """Accept the messages' states and write them in ONE transaction that also runs
        ``job(tx)`` on the database's worker; return its result (the asyncio
        ``update_with()`` contract)."""
        return self._runner.call(self._service.update_with, messages, job)

    def flush(self, message_id: str) -> None:
        """Return once every change to ``message_id`` accepted before the call is written."""
        self._runner.call(self._service.flush, message_id)

    def flush_all(self) -> None:
        """Return once every change accepted before the call is written."""
        self._runner.call(self._service.flush_all)

    def delete(self, message_id: str) -> None:
        """Delete the message; buffered changes are dropped and never resurrect the row."""
        self._runner.call(self._service.delete, message_id)

    def delete_session_messages(self, session_id: str) -> None:
        """Delete every message of the session (each gets its ``DELETED`` event)."""
        self._runner.call(self._service.delete_session_messages, session_id)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, message_id: str) -> Message:
        """The stored message (flush first for the newest buffered state)."""
        return self._runner.call(self._service.get, message_id)

    def list(self, session_id: str) -> builtins.list[Message]:
        """The session's stored messages in creation order."""
        return self._runner.call(self._service.list, session_id)

    def list_user_messages(self, session_id: str) -> builtins.list[Message]:
        """The session's user messages in creation order."""
        return self._runner.call(self._service.list_user_messages, session_id)

    def list_all_user_messages(self) -> builtins.list[Message]:
        """Every user message of every session, in creation order."""
        return self._runner.call(self._service.list_all_user_messages)

    # -- telemetry -------------------------------------------------------------------------------

    def stats(self) -> MessageStats:
        """A snapshot of the write path's and the broker's counters, taken on the loop thread."""
        return self._runner.run(self._service.stats)


def _subscribe(
    runner: LoopThread[Any],
    subscribe: _Subscribe[T],
    subscriptions: Subscriptions,
    owner: object,
) -> SyncSubscription[T]:
    """On the loop thread: subscribe, wrap, and register for the drain at close, in one step."""
    subscription = SyncSubscription(runner, subscribe(), owner)
    subscriptions.add(subscription)
    return subscription
