"""MessageService: the public face of messages — create, the debounced update, reads, deletes.

``update(message)`` is called once per streamed delta. It validates and copies the message before
it returns, buffers the copy, and returns at once for intermediate states; terminal changes
(finished, a tool call added or finished, reasoning ended) are written and announced before it
returns. The write path itself lives in ``_writer``; this module holds no SQL.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

from pubsub import Broker, BrokerStats

from ._changes import Change, Kind
from ._database._repository import Repository, Snapshot
from ._database._tx import Tx
from ._deprecation import warn_deprecated
from ._errors import InvalidMessage, StoreClosed, StoreReadOnly
from ._feed._feed import Feed
from ._feed._subscription import FeedSubscription
from ._loops import check_loop, running_loop, wrong_loop
from ._model import Message, Part, Reasoning, Role, Text, new_id, utc_now
from ._supervisor import Supervisor
from ._validation import check_storable
from ._writes._writer import Writer, WriteStats

__all__ = ["MessageService", "MessageStats", "Snapshot"]

R = TypeVar("R")

MAX_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class MessageStats(WriteStats):
    """A snapshot of the service's counters (see ``MessageService.stats``): the write path's,
    then the broker's."""

    broker: BrokerStats


class MessageService:
    """Messages of one store. Get it as ``store.messages``."""

    def __init__(
        self,
        repository: Repository,
        feed: Feed,
        broker: Broker[Message],
        *,
        supervisor: Supervisor,
        debounce: float,
        idle_release: float = 30.0,
        read_only: bool = False,
    ) -> None:
        self._repository = repository
        self._read_only = read_only
        self._loop = repository.database.loop
        self._feed = feed
        self._broker = broker
        self._writer = Writer(
            repository,
            feed.announce,
            supervisor=supervisor,
            listening=lambda: feed.active or broker.subscriber_count > 0,
            debounce=debounce,
            idle_release=idle_release,
            sender=self,
        )
        self._closed = False

    # -- events --------------------------------------------------------------------------------

    @property
    def broker(self) -> Broker[Message]:
        """Deprecated, and gone in the next release: the bare broker behind ``subscribe()``.

        Its counters are in ``stats().broker``; subscribe with ``subscribe()``, which adds what
        the bare broker lacks (replay from a revision, resync of a subscriber that fell behind).
        """
        warn_deprecated(
            "MessageService.broker is not public and goes in the next release: use "
            "stats().broker for its counters and subscribe() for events"
        )
        return self._broker

    def subscribe(
        self,
        *,
        buffer_size: int | None = None,
        session_id: str | None = None,
        since: int | None = None,
    ) -> FeedSubscription[Message]:
        """Receive ``CREATED`` / ``UPDATED`` / ``DELETED`` events for messages.

        ``session_id`` limits them to one session. ``since`` (a revision, e.g. a snapshot's or
        an earlier subscription's ``revision``) first replays the newest state of everything
        that changed after it; ``None`` starts from now. A subscriber that falls behind gets
        intermediate states merged and, if its buffer overflows for good, is brought back to
        the newest state from the database: late, never stale (see ``_feed._subscription``).
        """
        check_loop(self._loop, "MessageService.subscribe()")
        self._check_open()
        return FeedSubscription(
            self._feed,
            self._repository,
            self._broker,
            Kind.MESSAGE,
            buffer_size=buffer_size,
            since=since,
            session_id=session_id,
        )

    async def snapshot(self, session_id: str | None = None) -> Snapshot:
        """The stored messages (of one session, or all) and the revision they are consistent
        at: list them, then ``subscribe(since=snapshot.revision)`` to watch from there."""
        check_loop(self._loop, "MessageService.snapshot()")
        self._check_open()
        return await self._repository.snapshot(session_id)

    # -- writes --------------------------------------------------------------------------------

    async def create(
        self,
        session_id: str,
        *,
        role: Role | str,
        parts: Iterable[Part] = (),
        model: str = "",
        provider: str = "",
        is_summary_message: bool = False,
    ) -> Message:
        """Create and store a message now; publishes ``CREATED`` (must-deliver).

        If the caller is cancelled after the insert was submitted, the insert still commits
        and is announced; the caller just does not get the object.
        """
        check_loop(self._loop, "MessageService.create()")
        self._check_writable("MessageService.create()")
        now = utc_now()
        message = Message(
            new_id(),
            session_id,
            _role(role),
            list(parts),
            model,
            provider,
            now,
            now,
            is_summary_message,
        )
        _validate(message)
        writer = self._writer

        def created(_: list[Change]) -> None:
            writer.track_created(message.clone())

        await self._repository.create_message(message, created)
        return message

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
        """Create a message inside a running transaction: ``tx`` of a job that
        ``Store.transaction`` runs. Called from that job (it is not a coroutine).

        Checked and stored as ``create`` does it (``InvalidMessage``, ``SessionNotFound``:
        raised here, so the job rolls back unless it handles them), with its revision set.
        It is committed with the rest of the job, or not at all; when the transaction
        commits, the store takes note of it (as after ``create``: for ``update()``) and
        publishes ``CREATED`` (must-deliver) in commit order. Changing the returned message
        stores nothing: ``update()`` it after the transaction.
        """
        now = utc_now()
        message = Message(
            new_id(),
            session_id,
            _role(role),
            list(parts),
            model,
            provider,
            now,
            now,
            is_summary_message,
        )
        _validate(message)
        stored = message.clone()  # what is stored and announced, whatever the job does next
        self._repository.create_message_in(tx, stored)
        message.revision = stored.revision
        writer = self._writer
        tx.after_commit(lambda: writer.track_created(stored.clone()))
        return message

    async def update(self, message: Message) -> None:
        """Accept the message's current state; see the module docstring for when it is written.

        Raises ``InvalidMessage`` at once for bad input (including a changed ``session_id``,
        ``role`` or ``created_at``), ``MessageNotFound`` for a message this store deleted or
        found missing (a message it never saw is reported by the ``flush`` that would write
        it), ``WriteFailed`` if a terminal write failed (the state stays buffered and is
        retried).
        """
        # Called once per streamed token: kept flat on purpose.
        if running_loop() is not self._loop:
            raise wrong_loop(self._loop, "MessageService.update()")
        if self._closed:
            raise StoreClosed("message service")
        if self._read_only:
            raise StoreReadOnly("MessageService.update()")
        if not isinstance(message, Message):
            raise InvalidMessage(f"update() takes a Message, not {type(message).__name__}")
        writer = self._writer
        accepted = writer.last_accepted(message.id)
        streaming_only = accepted is not None and _streaming_only(message, accepted)
        if not streaming_only:
            _validate(message)
        copy = message.clone()
        if writer.accept(copy, streaming_only=streaming_only):
            await writer.write_now(copy.id)

    async def update_with(self, messages: Sequence[Message], job: Callable[[Tx], R]) -> R:
        """Accept each message's current state, as ``update()`` does, and write them now in
        ONE transaction that also runs ``job(tx)`` (after the messages, like a job of
        ``Store.transaction``); return ``job``'s result.

        For work that must be durable together with a message's final state: the
        dispatcher ends a turn this way, the reply's ``Finish`` and the turn's end in one
        commit. Both commit or neither does; a cancelled caller only stops waiting. The
        states are announced after the commit, with what ``job`` recorded, before this
        returns (terminal ones waiting, bounded, for slow subscribers as ``update()`` does).
        Raises ``InvalidMessage`` / ``MessageNotFound`` before anything is written, as
        ``update()`` does; ``WriteFailed`` when the transaction failed (nothing committed,
        the states stay buffered and are retried, ``job``'s own error is the cause). After
        a commit, a state the database refused (``WriteFailed``) or a row found deleted
        (``MessageNotFound``) is raised although the rest, ``job``'s work included,
        committed: a job that must know registers ``tx.after_commit``.
        """
        check_loop(self._loop, "MessageService.update_with()")
        self._check_writable("MessageService.update_with()")
        writer = self._writer
        copies: builtins.list[Message] = []
        for message in messages:
            if not isinstance(message, Message):
                raise InvalidMessage(f"update_with() takes Messages, not {type(message).__name__}")
            writer.last_accepted(message.id)  # MessageNotFound for a deleted one
            _validate(message)
            copies.append(message.clone())
        accepted: builtins.list[str] = []
        try:
            for copy in copies:
                writer.accept(copy)
                accepted.append(copy.id)
        except BaseException:
            for message_id in accepted:  # what was accepted is written as update() would
                with contextlib.suppress(Exception):
                    await writer.write_now(message_id)
            raise
        results: builtins.list[R] = []

        def run(tx: Tx) -> None:
            results.append(job(tx))

        await writer.write_with(accepted, run)
        return results[0]

    async def flush(self, message_id: str) -> None:
        """Return once every change to ``message_id`` accepted before the call is written."""
        check_loop(self._loop, "MessageService.flush()")
        self._check_open()
        await self._writer.flush(message_id)

    async def flush_all(self) -> None:
        """Return once every change accepted before the call is written.

        Raises ``MessageNotFound`` naming every message that another process deleted while
        this store still had changes of it buffered.
        """
        check_loop(self._loop, "MessageService.flush_all()")
        self._check_open()
        await self._writer.flush_all()

    async def delete(self, message_id: str) -> None:
        """Delete the message; buffered changes are dropped and never resurrect the row."""
        check_loop(self._loop, "MessageService.delete()")
        self._check_writable("MessageService.delete()")
        await self._writer.delete_message(
            message_id,
            lambda then, failed: self._repository.delete_message(message_id, then, failed),
        )

    async def delete_session_messages(self, session_id: str) -> None:
        """Delete every message of the session (each gets its ``DELETED`` event)."""
        check_loop(self._loop, "MessageService.delete_session_messages()")
        self._check_writable("MessageService.delete_session_messages()")
        await self._writer.delete_session(
            session_id,
            lambda then, failed: self._repository.delete_session_messages(session_id, then, failed),
        )

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, message_id: str) -> Message:
        """The stored message (flush first for the newest buffered state)."""
        check_loop(self._loop, "MessageService.get()")
        self._check_open()
        return await self._repository.get_message(message_id)

    async def list(self, session_id: str) -> builtins.list[Message]:
        """The session's stored messages in creation order."""
        check_loop(self._loop, "MessageService.list()")
        self._check_open()
        return await self._repository.list_messages(session_id)

    async def list_user_messages(self, session_id: str) -> builtins.list[Message]:
        """The session's user messages in creation order."""
        check_loop(self._loop, "MessageService.list_user_messages()")
        self._check_open()
        return await self._repository.list_user_messages(session_id)

    async def list_all_user_messages(self) -> builtins.list[Message]:
        """Every user message of every session, in creation order."""
        check_loop(self._loop, "MessageService.list_all_user_messages()")
        self._check_open()
        return await self._repository.list_all_user_messages()

    # -- telemetry and lifecycle -----------------------------------------------------------------

    def stats(self) -> MessageStats:
        """A snapshot of the write path's and the broker's counters."""
        return MessageStats(**asdict(self._writer.stats()), broker=self._broker.stats())

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("message service")

    def _check_writable(self, call: str) -> None:
        self._check_open()
        if self._read_only:
            raise StoreReadOnly(call)

    async def close(self) -> None:
        """Write everything buffered and stop the flusher. Idempotent."""
        check_loop(self._loop, "MessageService.close()")
        if self._closed:
            return
        self._closed = True
        await self._writer.close()


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidMessage(
            f"unknown role {role!r}; expected one of {', '.join(r.value for r in Role)}"
        ) from None


def _validate(message: Message) -> None:
    """The full check, for a new id or a change beyond streamed content.

    Every field stored in a column is checked here, so that nothing the database would refuse
    reaches a group commit.
    """
    if not isinstance(message.id, str):
        raise InvalidMessage(f"message id must be a str, not {type(message.id).__name__}")
    if len(message.id) > MAX_ID_LENGTH:
        raise InvalidMessage(f"message id longer than {MAX_ID_LENGTH} characters")
    message.validate()
    # Column-stored text the database would refuse (NUL, lone surrogates) fails here, not in
    # a background write, where it would fail the whole group commit on every retry.
    check_storable(message.id, "id", message.id)
    check_storable(message.id, "model", message.model)
    check_storable(message.id, "provider", message.provider)


def _streaming_only(message: Message, accepted: Message) -> bool:
    """True if ``message`` differs from ``accepted`` (valid) only in streamed text or thinking.

    Parts are frozen, so a part that is the very object already accepted is still valid. A
    changed ``Text``, or a changed ``Reasoning`` whose timestamps stayed, that replaces one of
    its own kind in place keeps the one-per-kind rules, needs only its strings checked, and
    changes none of the facts that make a change terminal. On anything else this returns
    False, and the caller runs the full check (which names the problem) and the full terminal
    judgement.
    """
    parts = message.parts
    if (
        type(parts) is not list
        or len(parts) != len(accepted.parts)
        or message.session_id != accepted.session_id
        or message.role is not accepted.role
        or message.model != accepted.model
        or message.provider != accepted.provider
        or message.created_at is not accepted.created_at
        or message.is_summary_message is not accepted.is_summary_message
    ):
        return False
    for new, old in zip(parts, accepted.parts, strict=True):
        if new is old:
            continue
        kind = type(new)
        if kind is not type(old):
            return False
        if kind is Text:
            text = new.text  # type: ignore[union-attr]
            if type(text) is not str or len(text) > _LARGE_FIELD:
                return False
        elif kind is Reasoning:
            if not _same_reasoning_times(new, old):  # type: ignore[arg-type]
                return False
        else:
            return False
    return True


# Past this size a streamed field takes the full check on every delta, which keeps the size
# limits exact; the full check only sums string lengths, so it stays O(parts), not O(text).
_LARGE_FIELD = 1 << 20


def _same_reasoning_times(new: Reasoning, old: Reasoning) -> bool:
    return (
        new.started_at is old.started_at
        and new.finished_at is old.finished_at
        and type(new.thinking) is str
        and len(new.thinking) <= _LARGE_FIELD
        and type(new.signature) is str
    )
