"""``MessageStoreChatMessageHistory``: langchain-core's ``BaseChatMessageHistory`` on
messagestore.

``aget_messages()`` / ``messages`` read the conversation in order; ``aadd_messages`` /
``add_messages`` append one store message each, durable before they return (also when the
caller is cancelled), never interleaved with a concurrent call; ``aclear`` / ``clear`` delete
the messages and keep the session. Storage: ``_langchain_messages``; the session:
``_store_sessions``; every method runs on the store's loop (``_loop_bridge``), the blocking ones
from a thread without a running loop. In full: docs/MODULES.md.
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
