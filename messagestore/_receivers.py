"""Sending a telemetry signal: each receiver is called on its own.

Blinker's ``Signal.send`` calls receivers in an undefined order and stops at the first that
raises, so one faulty receiver would silently starve the others (which of them depends on
memory addresses) or break the write or turn that sent it. ``send`` calls every receiver
connected for the sender, logs one that raises and goes on: telemetry never changes what the
store or the dispatcher does. Receivers run synchronously on the sending loop.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Signal

__all__ = ["send"]

_log = logging.getLogger("messagestore")


def send(signal: Signal, sender: object, **kwargs: Any) -> None:
    """Call each receiver of ``signal`` for ``sender`` with ``kwargs``; log any that raises."""
    if signal.is_muted or not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            _log.exception("a receiver of %s raised; ignored", getattr(signal, "name", signal))
