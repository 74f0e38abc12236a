"""``MessageStoreChatMessageHistory``: langchain-core's ``BaseChatMessageHistory`` on messagestore.

``RunnableWithMessageHistory(chain, lambda sid: MessageStoreChatMessageHistory(sid, store))``
keeps each conversation in the store. Methods, as ``BaseChatMessageHistory`` defines them:

* ``aget_messages()`` / ``messages`` — the conversation in the order added;
* ``aadd_messages(messages)`` / ``add_messages`` (and ``add_message``, ``add_user_message``,
  ``add_ai_message``) — appended in order, one store message each, written before the call
  returns (a caller cancelled meanwhile still gets them all written, then the cancellation);
  concurrent calls on one history never interleave their messages;
* ``aclear()`` / ``clear`` — deletes every message of the store session; the session stays.

How messages are stored and read back: ``_langchain_messages``. Which store session holds the
conversation: ``_store_sessions`` (an existing store session id is used as is; any other id
gets the session titled ``langchain:<id>``, created on the first write).

Every method runs its work on the store's event loop (``_loop_bridge``), wherever it is
called from. The async ones work from any event loop (another thread's, a second loop); the
blocking ones (``messages``, ``add_messages``, ``clear``) from a thread without a running loop
(a Flask or Django worker) schedule the work on the store's loop running in another thread and
wait; called from inside the store's own loop they raise ``RuntimeError`` pointing at the async
method, since blocking there would stop the loop they wait for.

A stored message part that does not decode is skipped with a warning and left in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from .. import Part, Role, Store
from ._adapter_state import adapter_lock
from ._langchain_messages import (
    CorruptMessage,
    decode_message,
    encode_messages,
    from_typed_parts,
    is_message_part,
)
from ._loop_bridge import LoopBridge
from ._outcome import run_to_outcome
from ._store_sessions import check_key, create_message, find_session

__all__ = ["NAMESPACE", "MessageStoreChatMessageHistory"]

NAMESPACE = "langchain"
"""Title prefix of the sessions this adapter creates, and ``Message.provider`` of its messages."""

logger = logging.getLogger("messagestore.adapters.langchain")


class MessageStoreChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat message history kept in a messagestore session."""

    def __init__(
        self,
        session_id: str,
        store: Store,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float | None = None,
    ) -> None:
        """``timeout``: seconds a blocking method waits for the store (default: no limit).
        ``loop``: accepted for compatibility; the store's own loop (``store.loop``) is used,
        and any other loop is refused.
        """
        self.session_id = check_key(session_id, "MessageStoreChatMessageHistory")
        if loop is not None and loop is not store.loop:
            raise ValueError(
                "MessageStoreChatMessageHistory: loop= must be the store's event loop "
                "(store.loop), which is used anyway; leave it out"
            )
        self.store = store
        self._bridge = LoopBridge("MessageStoreChatMessageHistory", store, timeout)

    def __repr__(self) -> str:
        return f"MessageStoreChatMessageHistory({self.session_id!r})"

    async def store_session_id(self) -> str | None:
        """The id of the messagestore session holding this history (None before any write)."""
        return await self._bridge.run(
            lambda: find_session(self.store, NAMESPACE, self.session_id), "store_session_id"
        )

    # -- async -------------------------------------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """The conversation, in the order added."""
        return await self._bridge.run(self._read, "aget_messages")

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order; returns once all are written."""
        encoded = encode_messages(messages)
        if encoded:
            await run_to_outcome(self._bridge.run(lambda: self._write(encoded), "aadd_messages"))

    async def aclear(self) -> None:
        """Delete every message of this history's store session."""
        await run_to_outcome(self._bridge.run(self._clear, "aclear"))

    # -- blocking ----------------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The conversation, in the order added (blocks; see the module docstring)."""
        return self._bridge.run_blocking(self._read, "messages", "aget_messages")

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order (blocks; see the module docstring)."""
        encoded = encode_messages(messages)
        if encoded:
            self._bridge.run_blocking(
                lambda: run_to_outcome(self._write(encoded)), "add_messages", "aadd_messages"
            )

    def clear(self) -> None:
        """Delete every message of this history's store session (blocks)."""
        self._bridge.run_blocking(lambda: run_to_outcome(self._clear()), "clear", "aclear")

    # -- on the store's loop -------------------------------------------------------------------

    async def _read(self) -> list[BaseMessage]:
        session_id = await find_session(self.store, NAMESPACE, self.session_id)
        if session_id is None:
            return []
        history: list[BaseMessage] = []
        for message in await self.store.messages.list(session_id):
            exact = [p for p in message.parts if is_message_part(p)]
            if not exact:
                history.extend(from_typed_parts(message))
                continue
            for index, part in enumerate(message.parts):
                if not is_message_part(part):
                    continue
                try:
                    history.append(decode_message(part))
                except CorruptMessage as exc:
                    logger.warning(
                        "skipping a corrupt message in %s (part %d): %s", message.id, index, exc
                    )
        return history

    async def _write(self, encoded: list[tuple[Role, list[Part]]]) -> None:
        async with adapter_lock(self.store, "langchain-write", self.session_id):
            for role, parts in encoded:
                await create_message(self.store, NAMESPACE, self.session_id, role=role, parts=parts)

    async def _clear(self) -> None:
        session_id = await find_session(self.store, NAMESPACE, self.session_id)
        if session_id is None:
            return
        async with adapter_lock(self.store, "langchain-write", self.session_id):
            await self.store.messages.delete_session_messages(session_id)
