"""Argument checks shared by ``Broker`` and ``Broker.subscribe``: clear errors, early."""

from __future__ import annotations

import math

__all__ = ["positive_int", "positive_seconds"]


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (at least 1), got {value!r}")
    return value


def positive_seconds(name: str, value: object) -> float:
    """Return ``value`` as float seconds if finite and > 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds, got {value!r} ({type(value).__name__})"
        )
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return seconds
