"""Adapters: keep an agent SDK's conversation history in messagestore.

* ``messagestore.adapters.openai_agents`` — ``MessageStoreSession`` (the OpenAI Agents SDK's
  ``Session`` protocol) and ``record_stream`` (a streamed run written through ``update()``);
  install with ``pip install "messagestore[openai-agents]"``.
* ``messagestore.adapters.langchain`` — ``MessageStoreChatMessageHistory`` (langchain-core's
  ``BaseChatMessageHistory``); install with ``pip install "messagestore[langchain]"``.

Each adapter imports its SDK only in its own module: importing this package, or
``messagestore``, imports neither SDK.
"""

__all__: list[str] = []
