"""Reading what a request carries: the JSON body and query parameters, checked by hand.

Each reader raises ``ApiError(422)`` (``415`` for a body that is not JSON by its content type)
with a message naming the field and what is wrong, so that clients and the OpenAPI fuzzing
see one error shape for every bad input. No validation library: the routes take few fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from ..wire import MAX_REVISION
from ._errors import ApiError

__all__ = ["Body", "json_body", "query_revision"]

_MISSING = object()


class Body:
    """A JSON object body with typed field access."""

    def __init__(self, data: Mapping[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ApiError(422, f"unknown field(s) in the body: {', '.join(map(repr, unknown))}")
        self._data = data

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


async def json_body(request: Request, allowed: frozenset[str], *, optional: bool = False) -> Body:
    """The request's JSON object body. ``optional``: an empty body reads as ``{}``."""
    raw = await request.body()
    if not raw.strip() and optional:
        return Body({}, allowed)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(415, f"the body must be application/json, not {media or 'untyped'}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(422, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object, not {_kind(data)}")
    return Body(data, allowed)


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
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
