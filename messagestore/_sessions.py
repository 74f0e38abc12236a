"""SessionService: create, read, edit and delete conversations, and announce each change."""

from __future__ import annotations

from dataclasses import replace

from pubsub import Broker

from ._changes import Kind
from ._database._repository import Repository
from ._deprecation import warn_deprecated
from ._errors import StoreClosed, StoreReadOnly
from ._feed._feed import Feed
from ._feed._subscription import FeedSubscription
from ._loops import check_loop
from ._messages import MessageService
from ._model import Session, new_id, utc_now
from ._validation import check_session_id_choice, check_session_text

__all__ = ["SessionService"]


class SessionService:
    """Sessions of one store. Every change is announced through the change feed."""

    def __init__(
        self,
        repository: Repository,
        feed: Feed,
        broker: Broker[Session],
        messages: MessageService,
        *,
        read_only: bool = False,
    ) -> None:
        self._repository = repository
        self._read_only = read_only
        self._loop = repository.database.loop
        self._feed = feed
        self._broker = broker
        self._messages = messages
        self._closed = False

    @property
    def broker(self) -> Broker[Session]:
        """Deprecated, and gone in the next release: the bare broker behind ``subscribe()``,
        which adds what the bare broker lacks (replay from a revision, resync)."""
        warn_deprecated(
            "SessionService.broker is not public and goes in the next release: use "
            "subscribe() for events"
        )
        return self._broker

    def subscribe(
        self, *, buffer_size: int | None = None, since: int | None = None
    ) -> FeedSubscription[Session]:
        """Receive ``CREATED`` / ``UPDATED`` / ``DELETED`` events for sessions.

        ``since`` (a revision) first replays the newest state of every session that changed
        after it; ``None`` starts from now. A session is ``UPDATED`` when saved and when its
        ``message_count`` changes.
        """
        check_loop(self._loop, "SessionService.subscribe()")
        self._check_open()
        return FeedSubscription(
            self._feed,
            self._repository,
            self._broker,
            Kind.SESSION,
            buffer_size=buffer_size,
            since=since,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("session service")

    def _check_writable(self, call: str) -> None:
        self._check_open()
        if self._read_only:
            raise StoreReadOnly(call)

    async def create(
        self,
        title: str,
        *,
        parent_session_id: str | None = None,
        id: str | None = None,
    ) -> Session:
        """Create a session; ``title`` may be empty but must be a string.

        ``id``: the session's id, chosen by the caller (a client that names its conversations
        itself, such as the AI SDK's ``useChat``); None lets the store generate one. A chosen
        id is a non-empty ``str`` of at most 255 characters without NUL or lone surrogates
        (``InvalidMessage`` otherwise); one a session already has raises ``SessionExists``.
        Either way nothing is written.
        """
        check_loop(self._loop, "SessionService.create()")
        self._check_writable("SessionService.create()")
        check_session_text(title, parent_session_id)
        chosen = id is not None
        session_id = check_session_id_choice(id) if chosen else new_id()
        now = utc_now()
        session = Session(session_id, title, parent_session_id, created_at=now, updated_at=now)
        await self._repository.create_session(session, chosen_id=chosen)
        return replace(session)

    async def get(self, session_id: str) -> Session:
        """The session, or ``SessionNotFound``."""
        check_loop(self._loop, "SessionService.get()")
        self._check_open()
        return await self._repository.get_session(session_id)

    async def list(self) -> list[Session]:
        """Every session, newest first."""
        check_loop(self._loop, "SessionService.list()")
        self._check_open()
        return await self._repository.list_sessions()

    async def save(self, session: Session) -> Session:
        """Store the editable fields (title, tokens, cost, summary id); return the stored row.

        ``message_count`` and ``created_at`` are the store's own and are not taken from
        ``session``.
        """
        check_loop(self._loop, "SessionService.save()")
        self._check_writable("SessionService.save()")
        check_session_text(session.title, session.parent_session_id)
        return await self._repository.save_session(session)

    async def delete(self, session_id: str) -> None:
        """Delete the session and its messages; each message gets its ``DELETED`` event,
        then the session."""
        check_loop(self._loop, "SessionService.delete()")
        self._check_writable("SessionService.delete()")
        repository = self._repository
        await self._messages._writer.delete_session(
            session_id, lambda then, failed: repository.delete_session(session_id, then, failed)
        )

    def close(self) -> None:
        """Refuse further calls. Idempotent."""
        check_loop(self._loop, "SessionService.close()")
        self._closed = True
