"""Deprecation warnings that point at the caller's code, not at messagestore's own frames."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_deprecated"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_deprecated(message: str) -> None:
    """Issue a ``DeprecationWarning`` attributed to the first frame outside this package.

    So an alias reached through another part of messagestore (the blocking twin's ``broker``
    delegates to the asyncio one) still names the line of the code that has to change.
    """
    level = 2  # our caller
    frame = sys._getframe(1)
    while frame is not None and _ours(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def _ours(filename: str) -> bool:
    return filename.startswith(_PACKAGE)
