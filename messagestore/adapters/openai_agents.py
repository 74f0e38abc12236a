"""The OpenAI Agents SDK adapter: ``MessageStoreSession`` and ``record_stream``.

Install with ``pip install "messagestore[openai-agents]"``::

    session = MessageStoreSession("user_123", store)      # the SDK's Session protocol
    result = await Runner.run(agent, "Hello", session=session)
    message = await record_stream(Runner.run_streamed(agent, "Again", session=session),
                                  store, "user_123")      # one assistant message

Items: ``_openai_items``; the session protocol: ``_openai_session``; streaming:
``_openai_stream``; which store session holds the history: ``_store_sessions``.
"""

from __future__ import annotations

try:
    import agents as _agents  # noqa: F401  (fail here, with the install hint)
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "messagestore.adapters.openai_agents needs the OpenAI Agents SDK: "
        'pip install "messagestore[openai-agents]"'
    ) from exc

from ._openai_session import MessageStoreSession
from ._openai_stream import record_stream

__all__ = ["MessageStoreSession", "record_stream"]
