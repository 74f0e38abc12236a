"""``create_app``: the Starlette application on an open store.

The app owns nothing it is given: the caller opens and closes the store and the dispatcher
(``messagestore serve`` does both, see ``_serve``). What the app owns are its open streams;
``app.drain()`` ends them (the server calls it on Ctrl-C before it stops, and the app's
lifespan shutdown calls it as well).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from .. import Store
from . import _chat, _live, _page, _rest
from ._context import Context
from ._errors import exception_handlers
from ._guard import Guard
from ._inbound import Inbound, dispatcher_inbound
from ._streams import StreamHub

__all__ = [
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_STREAMS",
    "MessageStoreApp",
    "create_app",
]

DEFAULT_MAX_BODY = 4 * 1024 * 1024
"""Largest request body taken, in bytes (an input of a million characters fits)."""
DEFAULT_KEEPALIVE = 15.0
"""Seconds between keep-alive comments on an idle stream."""
DEFAULT_MAX_STREAMS = 1000
"""Event and UI streams served at once; past it a new one gets 503 with ``Retry-After``."""

_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{8,512}")


class MessageStoreApp(Starlette):
    """The ASGI app ``create_app`` returns: a Starlette app with :meth:`drain`."""

    context: Context

    def drain(self) -> None:
        """End every open stream and refuse new ones (503). Idempotent."""
        self.context.hub.drain()

    @property
    def open_streams(self) -> int:
        """Event and UI streams being served now."""
        return self.context.hub.open_streams


def create_app(
    store: Store,
    *,
    dispatcher: Any = None,
    inbound: Inbound | None = None,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    allowed_hosts: Collection[str] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    keepalive: float = DEFAULT_KEEPALIVE,
    max_streams: int | None = DEFAULT_MAX_STREAMS,
    stream_buffer: int | None = None,
) -> MessageStoreApp:
    """The HTTP service on ``store`` (an open ``messagestore.Store``; the caller closes it).

    ``dispatcher``: a ``messagestore.dispatch.Dispatcher`` that takes ``POST .../inputs``,
    ``.../stop`` and the chat routes ``POST /api/chat``, ``GET /api/chat/{id}/stream``
    (started or not: an unstarted one commits input for a dispatcher elsewhere to run);
    without one (nor ``inbound``) those routes answer 503 (the chat routes need the
    dispatcher itself: ``inbound`` alone does not serve them). ``token``: require
    ``Authorization: Bearer TOKEN`` on every route (8 to 512 characters of
    ``A-Za-z0-9._~+/=-``). ``cors_origins``: origins allowed by CORS (none: CORS off); they
    are also the only other origins whose pages may write (``POST``, ``DELETE``, ...) without
    the bearer header: a request from any other site is refused (403, see ``_guard``).
    ``allowed_hosts``: answer only requests whose Host is one of these (``serve`` passes the
    loopback names when it runs without a token). ``max_body``: bytes; larger bodies get 413.
    ``keepalive``: seconds between keep-alive comments on idle streams. ``max_streams``: event
    and UI streams open at once (None: no limit); one more gets 503 with ``Retry-After``.
    ``stream_buffer``: events each stream's feed subscription holds for a client that reads
    slower than the feed publishes, before it merges a message's states (None: the store's
    default, 64); with a small one a slow client gets merged states (and deltas) sooner.

    Limits on connections themselves (how many, how long a request head may take to arrive)
    belong to the HTTP server: ``serve`` sets them on uvicorn.
    """
    if token is not None and not _TOKEN.fullmatch(token):
        raise ValueError(
            "token must be 8 to 512 characters of letters, digits and ._~+/=- "
            "(it travels in a header and a cookie)"
        )
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ValueError(f"max_body must be a positive number of bytes, not {max_body!r}")
    if not keepalive > 0:
        raise ValueError(f"keepalive must be a positive number of seconds, not {keepalive!r}")
    if max_streams is not None and (
        isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1
    ):
        raise ValueError(f"max_streams must be a positive number or None, not {max_streams!r}")
    if stream_buffer is not None and (
        isinstance(stream_buffer, bool) or not isinstance(stream_buffer, int) or stream_buffer < 1
    ):
        raise ValueError(
            f"stream_buffer must be a positive number of events or None, not {stream_buffer!r}"
        )
    if inbound is None and dispatcher is not None:
        inbound = dispatcher_inbound(dispatcher)
    context = Context(
        store=store,
        inbound=inbound,
        keepalive=float(keepalive),
        hub=StreamHub(max_streams),
        stream_buffer=stream_buffer,
        chat=dispatcher,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        try:
            yield
        finally:
            context.hub.drain()

    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "last-event-id"],
                expose_headers=["x-vercel-ai-ui-message-stream"],
            )
        )
    middleware.append(
        Middleware(
            Guard,
            token=token,
            max_body=max_body,
            allowed_hosts=allowed_hosts,
            trusted_origins=tuple(cors_origins),
        )
    )
    app = MessageStoreApp(
        routes=[*_rest.routes, *_live.routes, *_chat.routes, *_page.routes],
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.context = context
    app.state.messagestore = context
    return app
