"""The gate in front of every route: Host check, bearer token, request body limit.

A pure ASGI middleware (it never buffers a response, so streams pass straight through):

* **Host** (``allowed_hosts``): a server bound to loopback without a token answers only
  requests whose ``Host`` names loopback (``127.0.0.1``, ``localhost``, ``[::1]``), so a web
  page elsewhere cannot reach it through DNS rebinding. Others get 403.
* **Token** (``token``): every route, the page included, needs ``Authorization: Bearer
  TOKEN``. A browser cannot send that header when it opens a page or an ``EventSource``, so the
  page may be opened once as ``/?token=TOKEN``: the answer sets an HTTP-only, same-site strict
  cookie that later requests from the page carry instead. Anything else gets 401 with
  ``WWW-Authenticate: Bearer``. Tokens are compared in constant time.
* **Body limit** (``max_body``): a body announced or found larger than the limit gets 413
  before the route runs; the body is read here (bounded) and handed on to the route.

CORS preflight requests are answered by Starlette's CORS middleware, outside this gate (only
when the server was given ``--cors-origin``).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection
from http.cookies import SimpleCookie

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import error_response

__all__ = ["COOKIE", "Guard", "LOOPBACK_HOSTS"]

COOKIE = "messagestore_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Guard:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body: int,
        allowed_hosts: Collection[str] | None,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.allowed_hosts is not None and not self._host_allowed(headers.get("host", "")):
            response = error_response(403, "this server answers only requests to a loopback host")
            await response(scope, receive, send)
            return
        set_cookie = False
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
            set_cookie = verdict
        body_receive = await self._bounded_body(scope, receive, send, headers)
        if body_receive is None:
            return
        if set_cookie:
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

    def _authorize(self, scope: Scope, headers: Headers) -> bool | None:
        """None: refused; True: accepted by ``?token=`` on the page (set the cookie); False:
        accepted by header or cookie."""
        assert self.token is not None
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip().encode(), self.token):
            return False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            cookie = SimpleCookie()
        morsel = cookie.get(COOKIE)
        if morsel is not None and _same(morsel.value.encode(), self.token):
            return False
        if scope.get("path") == "/" and scope.get("method") == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            for pair in query.split("&"):
                name, _, value = pair.partition("=")
                if name == "token" and _same(_unquote(value).encode(), self.token):
                    return True
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
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> Receive | None:
        """A receive that replays the (bounded) body; None after answering 413."""
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
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


def _unquote(value: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(value)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
