"""SessionService: create, read, edit and delete conversations, and announce each change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from pubsub import Broker, EventType, Subscription

from ._database._repository import Repository
from ._errors import InvalidMessage, StoreClosed
from ._model import Message, Session

__all__ = ["SessionService"]

# Deletes a session's messages the way MessageService does (pending state dropped, in-flight
# writes awaited, DELETED events published) around the repository call it is given.
SessionMessagesDeleter = Callable[[str, Callable[[], Awaitable[list[Message]]]], Awaitable[None]]


class SessionService:
    """Sessions of one store. Every change is published with ``publish_must_deliver``."""

    def __init__(self, repository: Repository, delete_messages: SessionMessagesDeleter) -> None:
        self._repository = repository
        self._delete_messages = delete_messages
        self._broker: Broker[Session] = Broker(key=_session_key)
        self._closed = False

    @property
    def broker(self) -> Broker[Session]:
        """The broker that carries this service's events."""
        return self._broker

    def subscribe(self, *, buffer_size: int | None = None) -> Subscription[Session]:
        """Receive ``CREATED`` / ``UPDATED`` / ``DELETED`` events for sessions."""
        return self._broker.subscribe(buffer_size=buffer_size)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("session service")

    async def create(self, title: str, *, parent_session_id: str | None = None) -> Session:
        """Create a session; ``title`` may be empty but must be a string."""
        self._check_open()
        _check_title(title)
        if parent_session_id is not None and not isinstance(parent_session_id, str):
            raise InvalidMessage("parent_session_id must be a str or None")
        session = await self._repository.create_session(title, parent_session_id)
        await self._broker.publish_must_deliver(EventType.CREATED, _copy(session))
        return session

    async def get(self, session_id: str) -> Session:
        """The session, or ``SessionNotFound``."""
        self._check_open()
        return await self._repository.get_session(session_id)

    async def list(self) -> list[Session]:
        """Every session, newest first."""
        self._check_open()
        return await self._repository.list_sessions()

    async def save(self, session: Session) -> Session:
        """Store the editable fields (title, tokens, cost, summary id); return the stored row.

        ``message_count`` and ``created_at`` are the store's own and are not taken from
        ``session``.
        """
        self._check_open()
        _check_title(session.title)
        saved = await self._repository.save_session(session)
        await self._broker.publish_must_deliver(EventType.UPDATED, _copy(saved))
        return saved

    async def delete(self, session_id: str) -> None:
        """Delete the session and its messages; each message gets its ``DELETED`` event."""
        self._check_open()
        session = await self._repository.get_session(session_id)
        await self._delete_messages(session_id, lambda: self._repository.delete_session(session_id))
        await self._broker.publish_must_deliver(EventType.DELETED, session)

    def close(self) -> None:
        """Refuse further calls and end every subscription. Idempotent."""
        self._closed = True
        self._broker.shutdown()


def _session_key(session: Session) -> str:
    return session.id


def _copy(session: Session) -> Session:
    return replace(session)


def _check_title(title: object) -> None:
    if not isinstance(title, str):
        raise InvalidMessage(f"session title must be a str, not {type(title).__name__}")
