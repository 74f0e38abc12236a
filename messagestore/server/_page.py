"""The web view (``GET /`` and its static files) and the OpenAPI document.

The page is plain HTML, CSS and JavaScript shipped in ``messagestore/server/static`` — no build
step. It is served with a Content-Security-Policy that allows only this origin's own script and
style: message content is put in the page as text (``textContent``) by the script, and even a
mistake there could not run an inline script.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._context import endpoint, json_response
from ._errors import ApiError
from ._openapi import openapi_document

__all__ = ["routes"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "delta.js": "text/javascript; charset=utf-8",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("messagestore.server").joinpath("static", name).read_bytes()


@endpoint
async def page(request: Request) -> Response:
    del request
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@endpoint
async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media = _STATIC.get(name)
    if media is None:
        raise ApiError(404, f"no static file {name!r}")
    return Response(_asset(name), headers={**_HEADERS, "content-type": media})


@endpoint
async def openapi(request: Request) -> Response:
    del request
    return json_response(_document())


@cache
def _document() -> dict[str, object]:
    return openapi_document()


routes = [
    Route("/", page, methods=["GET"]),
    Route("/static/{name}", static, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
