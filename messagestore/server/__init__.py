"""The HTTP service: REST, Server-Sent Events of the change feed, the Vercel AI SDK UI message
stream, and a live web view, on Starlette (``pip install "messagestore[server]"``).

``messagestore serve`` runs it (:func:`serve`); :func:`create_app` gives the ASGI app on a store
you opened; :func:`http_protocol` gives your own uvicorn the connection limits ``serve`` sets.
Routes: ``_rest`` (sessions, messages, input, stop), ``_live`` (``/api/events``, the UI
stream), ``_chat`` (``/api/chat``, the AI SDK's ``useChat``), ``_page`` (``/``,
``/openapi.json``). README, "HTTP service", documents them; the layers:
docs/ARCHITECTURE.md.
"""

from ._app import (
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_STREAMS,
    MessageStoreApp,
    create_app,
)
from ._connections import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, http_protocol
from ._inbound import Accepted, Inbound
from ._serve import ServeOptions, serve

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_STREAMS",
    "Accepted",
    "Inbound",
    "MessageStoreApp",
    "ServeOptions",
    "create_app",
    "http_protocol",
    "serve",
]
