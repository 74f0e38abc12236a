"""Connection limits uvicorn lacks: a deadline for request heads, and refusing connections
past the limit at once.

:func:`http_protocol` gives uvicorn's h11 protocol with a header deadline (a request's whole
head within ``header_timeout`` seconds of the connection being ready, else it is closed) and
the connection limit answered with the server's JSON error (503, ``Retry-After``), the
connection closed at once. It is used even where ``httptools`` is installed, so the limits
always hold. In full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ._errors import error_body

__all__ = ["DEFAULT_HEADER_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "RETRY_AFTER", "http_protocol"]

DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a connection has to send a complete request head."""
DEFAULT_MAX_CONNECTIONS = 2048
"""Connections (and requests in progress) at once; room for the default 1,000 streams."""
RETRY_AFTER = 1
"""Seconds a client refused for want of a connection is asked to wait (``Retry-After``)."""

_FULL = "the server holds as many connections as it takes; retry later"


def http_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` (see the module docstring); the
    connection limit is the config's ``limit_concurrency``."""
    if not header_timeout > 0:
        raise ValueError(f"header_timeout must be positive, not {header_timeout!r}")
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"header_timeout": header_timeout})


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header deadline and the connection limit."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn's own check answers text/plain: enforce the same limit with the JSON error.
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self.app = self._within_limit(self.app)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since: object = None  # the cycle current when the deadline was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            transport.write(_raw_unavailable())
            transport.close()
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._head_arrived()

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()  # may start a pipelined request's cycle
        if not self.transport.is_closing() and self.cycle is finished:
            self._await_head()  # the next head has the deadline from now

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._waiting_since = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_arrived(self) -> None:
        """A new request cycle began since the deadline was armed: its head is complete."""
        if self._head_timer is not None and self.cycle is not self._waiting_since:
            self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _within_limit(self, app: ASGI3Application) -> ASGI3Application:
        tasks = self.tasks

        async def limited(
            scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            # This request's own task is already counted.
            if self.max_connections is not None and len(tasks) > self.max_connections:
                body = error_body(503, _FULL)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await app(scope, receive, send)

        return limited


def _raw_unavailable() -> bytes:
    body = error_body(503, _FULL)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"retry-after: {RETRY_AFTER}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body
