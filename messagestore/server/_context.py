"""What every route of one app shares: the store, the dispatcher port, the open streams, the
limits; and the helpers that turn a route's result or failure into a response."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import Store
from ._errors import to_response
from ._inbound import Inbound
from ._json import dumps
from ._streams import StreamHub

__all__ = ["Context", "context", "endpoint", "json_response"]


@dataclass(slots=True)
class Context:
    store: Store
    inbound: Inbound | None
    keepalive: float
    hub: StreamHub = field(default_factory=StreamHub)
    stream_buffer: int | None = None
    """Events each stream's feed subscription admits before it merges (None: the store's
    default)."""
    chat: Any = None
    """The dispatcher the chat routes submit to and read turns from (``_chat``), or None."""


def context(request: Request) -> Context:
    ctx: Context = request.app.state.messagestore
    return ctx


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        dumps(value), status_code=status, media_type="application/json", headers=headers
    )


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(handler: Handler) -> Handler:
    """``handler`` with every exception it raises turned into the JSON error response."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return to_response(exc)

    return wrapper
