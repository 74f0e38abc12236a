"""Errors as JSON with one stable shape, and the status each failure gets.

Every error response, from every route and middleware, is::

    {"error": {"status": 404, "code": "not_found", "message": "session not found: 'x'"}}

``code`` is stable (clients branch on it), ``message`` is for people. ``CODES`` maps each status
to its code (``bad_request``, ``unauthorized``, ``forbidden``, ``not_found``, ``queue_full``,
``invalid``, ``unavailable``, ``internal``, ...); when each is sent: README, "HTTP service", and
docs/MODULES.md.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .. import BackgroundTaskFailed, InvalidMessage, NotFoundError, QueueFull, StoreClosed
from ._json import dumps

__all__ = ["ApiError", "error_body", "error_response", "exception_handlers", "to_response"]

log = logging.getLogger("messagestore.server")

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """A failure the API reports to the client: ``status`` and a message naming what is wrong."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_"))
        self.message = message
        self.headers = headers


def error_body(status: int, message: str, *, code: str | None = None) -> bytes:
    """The JSON of an error response (see the module docstring)."""
    code = code or CODES.get(status, "error")
    return dumps({"error": {"status": status, "code": code, "message": message}})


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """The JSON error response (see the module docstring)."""
    body = error_body(status, message, code=code)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def to_response(exc: BaseException) -> Response:
    """The error response for ``exc``, whatever raised it."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)
    if isinstance(exc, HTTPException):
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)
    if isinstance(exc, NotFoundError):
        return error_response(404, str(exc))
    if isinstance(exc, QueueFull):
        return error_response(
            409, str(exc) or "the session's input queue is full", code="queue_full"
        )
    if isinstance(exc, InvalidMessage):
        return error_response(422, str(exc))
    if isinstance(exc, StoreClosed):
        return error_response(503, "the store is closed (the server is shutting down)")
    if isinstance(exc, BackgroundTaskFailed):
        return error_response(503, str(exc))
    log.error("unexpected error while handling a request", exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__})")


async def _handle(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 404:
        return error_response(404, f"no route {request.url.path!r}")
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return error_response(
            405,
            f"{request.method} is not allowed on {request.url.path!r}",
            headers=dict(exc.headers) if exc.headers else None,
        )
    return to_response(exc)


exception_handlers = {HTTPException: _handle}
"""Starlette's own errors (no such route, wrong method) in the same shape. Errors a route
raises are turned into responses by the route itself (``_routing.endpoint``), so nothing
reaches Starlette's 500 handler, which would re-raise into the server."""
