"""The LangChain adapter: ``MessageStoreChatMessageHistory``.

Install with ``pip install "messagestore[langchain]"``::

    history = MessageStoreChatMessageHistory("user_123", store)   # a BaseChatMessageHistory
    await history.aadd_messages([HumanMessage("Hello"), AIMessage("Hi!")])
    messages = await history.aget_messages()

Storage: ``_langchain_messages``; the history and its blocking methods: ``_langchain_history``;
which store session holds the conversation: ``_store_sessions``.
"""

from __future__ import annotations

try:
    import langchain_core as _langchain_core  # noqa: F401  (fail here, with the install hint)
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "messagestore.adapters.langchain needs langchain-core: "
        'pip install "messagestore[langchain]"'
    ) from exc

from ._langchain_history import MessageStoreChatMessageHistory

__all__ = ["MessageStoreChatMessageHistory"]
