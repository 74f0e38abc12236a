"""The one check both adapters need: a value they store inside a part must be plain JSON, so
that what is stored reads back equal."""

from __future__ import annotations

import math

from .. import InvalidMessage

__all__ = ["check_json_value"]


def check_json_value(value: object, where: str) -> None:
    """Return if ``value`` is plain JSON (dict with str keys, list, str, int, finite float,
    bool, None) all the way down, so that what is stored reads back equal; else raise
    ``InvalidMessage`` naming the path ``where`` leads to."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessage(f"{where} is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, list):
        for i, element in enumerate(value):
            check_json_value(element, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                raise InvalidMessage(
                    f"{where} has a {type(key).__name__} key {key!r}; JSON keys are strings"
                )
            check_json_value(element, f"{where}[{key!r}]")
        return
    raise InvalidMessage(
        f"{where} is a {type(value).__name__}; only JSON values can be stored exactly "
        "(dict, list, str, int, float, bool, None)"
    )
