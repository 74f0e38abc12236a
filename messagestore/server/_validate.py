"""Reading what a request carries: the JSON body and query parameters, checked by hand.

Each reader raises ``ApiError(422)`` (``415`` for a body that is not JSON by its content type)
with a message naming the field and what is wrong, so that clients and the OpenAPI fuzzing
see one error shape for every bad input. No validation library: the routes take few fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from ..wire import MAX_REVISION
from ._errors import ApiError
from ._guard import is_json_media

__all__ = ["Body", "json_body", "no_body", "query_revision"]

_MISSING = object()


class Body:
    """A JSON object body with typed field access. ``allowed``: the fields it may hold
    (others are a 422); None takes any (a body another program shapes, ``/api/chat``)."""

    def __init__(self, data: Mapping[str, Any], allowed: frozenset[str] | None) -> None:
        if allowed is not None:
            unknown = sorted(set(data) - allowed)
            if unknown:
                shown = ", ".join(map(repr, unknown))
                raise ApiError(422, f"unknown field(s) in the body: {shown}")
        self._data = data

    @property
    def data(self) -> Mapping[str, Any]:
        """The decoded object."""
        return self._data

    def string(self, name: str, *, required: bool = False, default: str = "") -> str:
        value = self._data.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise ApiError(422, f"field {name!r} is required")
            return default
        if not isinstance(value, str):
            raise ApiError(422, f"field {name!r} must be a string, not {_kind(value)}")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ApiError(422, f"field {name!r} must be a string or null, not {_kind(value)}")
        return value

    def optional_object(self, name: str) -> Mapping[str, Any] | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ApiError(422, f"field {name!r} must be an object or null, not {_kind(value)}")
        return value


async def json_body(
    request: Request, allowed: frozenset[str] | None, *, optional: bool = False
) -> Body:
    """The request's JSON object body. ``optional``: an empty body reads as ``{}``.

    The content type must be ``application/json`` (or ``application/*+json``) even for an empty
    body: a page of another site can post a ``text/plain`` or form body without asking first,
    but not JSON. A number too long to convert (more digits than Python converts, an exponent
    beyond the float range) or a ``NaN``/``Infinity`` literal is a 422 naming where it is.
    """
    media = request.headers.get("content-type", "")
    if not is_json_media(media):
        shown = media.split(";")[0].strip() or "untyped"
        raise ApiError(415, f"the body must be application/json, not {shown}")
    raw = await request.body()
    if not raw.strip() and optional:
        return Body({}, allowed)
    try:
        data = json.loads(
            raw,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_Unconvertible,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(422, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object, not {_kind(data)}")
    _refuse_unconvertible(data)
    return Body(data, allowed)


async def no_body(request: Request) -> None:
    """Check that a route that takes no body got none: empty, or ``{}`` as JSON. Without a
    content type only an empty body passes (never a form a page could post cross-site)."""
    raw = await request.body()
    media = request.headers.get("content-type")
    if media is None:
        if raw:
            raise ApiError(415, "the body must be application/json, not untyped")
        return
    body = await json_body(request, frozenset(), optional=True)
    del body


class _Unconvertible:
    """A JSON number (or a NaN/Infinity literal) that does not convert to a finite value."""

    def __init__(self, text: str) -> None:
        self.text = text

    def describe(self) -> str:
        if self.text in ("NaN", "Infinity", "-Infinity"):
            return f"{self.text} is not a JSON number"
        shown = self.text if len(self.text) <= 24 else self.text[:20] + "..."
        if any(c in self.text for c in ".eE"):
            return f"a number beyond the range of a float ({shown})"
        digits = sum(c.isdigit() for c in self.text)
        return f"an integer of too many digits to convert ({digits:,}: {shown})"


def _parse_int(text: str) -> int | _Unconvertible:
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return _Unconvertible(text)


def _parse_float(text: str) -> float | _Unconvertible:
    value = float(text)
    return value if math.isfinite(value) else _Unconvertible(text)


def _refuse_unconvertible(data: dict[str, Any]) -> None:
    """``ApiError(422)`` naming the first number that did not convert, by its path."""
    stack: list[tuple[str, Any]] = [(repr(name), value) for name, value in data.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Unconvertible):
            raise ApiError(422, f"field {path} holds {value.describe()}")
        if isinstance(value, dict):
            stack += [(f"{path}.{name}", item) for name, item in value.items()]
        elif isinstance(value, list):
            stack += [(f"{path}[{index}]", item) for index, item in enumerate(value)]


def query_revision(request: Request, name: str) -> int | None:
    """An optional non-negative integer query parameter (a revision)."""
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    return parse_revision(text, f"query parameter {name!r}")


def parse_revision(text: str, what: str) -> int:
    """``text`` as a revision (a decimal integer from 0 to 2**63 - 1, what the revision columns
    hold), else ``ApiError(422)``."""
    stripped = text.strip()
    if (
        not stripped.isascii()
        or not stripped.isdigit()
        or len(stripped) > len(str(MAX_REVISION))
        or int(stripped) > MAX_REVISION
    ):
        raise ApiError(
            422, f"{what} must be a revision (an integer from 0 to 2**63 - 1), not {text!r}"
        )
    return int(stripped)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, _Unconvertible):
        return "a number"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
