"""The gate in front of every route: Host check, bearer token, cross-site requests, content
type, request body limit.

A pure ASGI middleware (responses stream straight through). A tokenless server answers only
loopback ``Host`` names; with a token every route needs ``Authorization: Bearer`` (or the
cookie ``/?token=`` sets); a request from a foreign ``Origin``, or a cross-site write, gets
403; a write body must be JSON (415) and within ``max_body`` (413). The rules: README, "HTTP
service", Safety; in full: docs/MODULES.md.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Collection
from http.cookies import SimpleCookie
from urllib.parse import unquote_plus, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import error_response

__all__ = ["COOKIE", "LOOPBACK_HOSTS", "SAFE_METHODS", "Guard", "is_json_media"]

COOKIE = "messagestore_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing; every other method is a write."""

_Origin = tuple[str, str, int | None]


class _Auth(enum.Enum):
    NONE = "none"  # no token configured
    BEARER = "bearer"  # the Authorization header
    COOKIE = "cookie"  # the cookie the page left
    PAGE = "page"  # GET /?token=TOKEN: accepted, and the cookie is set


def is_json_media(content_type: str) -> bool:
    """True for ``application/json`` and ``application/*+json`` (parameters ignored)."""
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Guard:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body: int,
        allowed_hosts: Collection[str] | None,
        trusted_origins: Collection[str] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts else None
        self.trust_every_origin = "*" in trusted_origins
        self.trusted_origins = frozenset(
            parsed for o in trusted_origins if (parsed := _parse_origin(o)) is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.allowed_hosts is not None and not self._host_allowed(headers.get("host", "")):
            response = error_response(403, "this server answers only requests to a loopback host")
            await response(scope, receive, send)
            return
        auth = _Auth.NONE
        if self.token is not None:
            verdict = self._authorize(scope, headers)
            if verdict is None:
                response = error_response(
                    401,
                    "a bearer token is required (Authorization: Bearer TOKEN)",
                    headers={"www-authenticate": 'Bearer realm="messagestore"'},
                )
                await response(scope, receive, send)
                return
            auth = verdict
        write = scope.get("method", "GET") not in SAFE_METHODS
        if auth is not _Auth.BEARER:
            refusal = self._cross_site(scope, headers, write=write)
            if refusal is not None:
                await error_response(403, refusal)(scope, receive, send)
                return
        content_type = headers.get("content-type")
        if write and content_type is not None and not is_json_media(content_type):
            media = content_type.split(";")[0].strip() or "an empty type"
            await error_response(415, f"the body must be application/json, not {media}")(
                scope, receive, send
            )
            return
        typed = bool(content_type)
        body_receive = await self._bounded_body(scope, receive, send, headers, typed=typed)
        if body_receive is None:
            return
        if auth is _Auth.PAGE:
            send = self._with_cookie(send)
        await self.app(scope, body_receive, send)

    def _host_allowed(self, host: str) -> bool:
        assert self.allowed_hosts is not None
        name = _hostname(host)
        if name in self.allowed_hosts:
            return True
        # The loopback set also admits every loopback address (127.0.0.2, ...).
        if self.allowed_hosts == LOOPBACK_HOSTS:
            try:
                return ipaddress.ip_address(name.strip("[]")).is_loopback
            except ValueError:
                return False
        return False

    def _authorize(self, scope: Scope, headers: Headers) -> _Auth | None:
        """How the request proved it holds the token; None: it did not."""
        assert self.token is not None
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip().encode(), self.token):
            return _Auth.BEARER
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            cookie = SimpleCookie()
        morsel = cookie.get(COOKIE)
        if morsel is not None and _same(morsel.value.encode(), self.token):
            return _Auth.COOKIE
        if scope.get("path") == "/" and scope.get("method") == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            for pair in query.split("&"):
                name, _, value = pair.partition("=")
                if name == "token" and _same(unquote_plus(value).encode(), self.token):
                    return _Auth.PAGE
        return None

    def _cross_site(self, scope: Scope, headers: Headers, *, write: bool) -> str | None:
        """Why a browser's request from another site is refused; None when it is not."""
        origin_header = headers.get("origin")
        if origin_header is not None:
            origin = _parse_origin(origin_header)
            if origin is not None and (self.trust_every_origin or origin in self.trusted_origins):
                return None  # a trusted origin, however cross-site
            if origin is None or origin != _own_origin(scope, headers):
                return (
                    f"cross-site request refused: Origin {origin_header[:200]!r} is neither "
                    "this server's own nor an allowed --cors-origin"
                )
        if write and headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
            return (
                "cross-site request refused: a page of another site may not write here "
                "(Sec-Fetch-Site: cross-site)"
            )
        return None

    def _with_cookie(self, send: Send) -> Send:
        assert self.token is not None
        value = f"{COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"set-cookie", value.encode())]
            await send(message)

        return sending

    async def _bounded_body(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, *, typed: bool
    ) -> Receive | None:
        """A receive that replays the (bounded) body; None after answering 413 (too large)
        or 415 (a body without a content type)."""
        if scope.get("method") in SAFE_METHODS:
            return receive
        too_large = error_response(
            413, f"the request body is larger than the limit of {self.max_body:,} bytes"
        )
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            await too_large(scope, receive, send)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await too_large(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not typed:
            untyped = error_response(415, "the body must be application/json, not untyped")
            await untyped(scope, receive, send)
            return None
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _same(given: bytes, token: bytes) -> bool:
    return hmac.compare_digest(given, token)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _parse_origin(text: str) -> _Origin | None:
    """``scheme://host[:port]`` as (scheme, host, port with the scheme's default filled in);
    None for ``null`` and anything that is not an origin."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


def _own_origin(scope: Scope, headers: Headers) -> _Origin | None:
    """The origin this request was addressed to: its scheme and ``Host``."""
    scheme = str(scope.get("scheme", "http")).lower()
    host = headers.get("host", "").strip()
    if not host:
        return None
    return _parse_origin(f"{scheme}://{host}")


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
