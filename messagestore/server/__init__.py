"""The HTTP service: REST, Server-Sent Events of the change feed, the Vercel AI SDK UI message
stream, and a live web view, on Starlette (``pip install "messagestore[server]"``).

``messagestore serve`` runs it (see :func:`serve`); :func:`create_app` gives the ASGI app on a
store you opened, for your own server or tests; :func:`http_protocol` gives your own uvicorn
the connection limits ``serve`` sets (a deadline for request heads, the connection limit with
the JSON error). Routes:

* ``GET/POST /api/sessions``, ``GET/DELETE /api/sessions/{id}``,
  ``GET /api/sessions/{id}/messages``, ``GET /api/messages/{id}`` (see ``_rest``)
* ``POST /api/sessions/{id}/inputs``, ``POST /api/sessions/{id}/stop`` (into the dispatcher)
* ``GET /api/events?session_id=&since=&deltas=`` (Server-Sent Events: a message whole, then
  its changes as deltas; ``Last-Event-ID`` resumes) and
  ``GET /api/messages/{id}/ui-stream`` (the AI SDK UI message stream v1) (see ``_live``)
* ``POST /api/chat`` and ``GET /api/chat/{id}/stream``: the chat backend the AI SDK's
  ``useChat`` (``DefaultChatTransport``, ``resume: true``) talks to (see ``_chat``)
* ``GET /`` (the web view), ``GET /openapi.json``
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
