"""The ``pubsub.dropped`` blinker signal: one notification per counted drop.

It fires once for every (event, subscription) pair counted in ``drop_count`` or
``must_deliver_drop_count``, with ``sender`` = the broker and ``event=``, ``path=`` (``"lossy"``:
that subscription lost the event; ``"must_deliver"``: not admitted before the deadline, still
queued as its key's newest state). It fires on the broker's thread once state and counters are
consistent; a receiver that raises is logged and ignored. Conflation is not a drop.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal

import blinker

__all__ = ["DropPath", "announce_drops", "dropped"]

DropPath = Literal["lossy", "must_deliver"]

dropped: Final = blinker.signal(
    "pubsub.dropped",
    doc="Fires on every dropped event: sender=broker, event=Event, path='lossy'|'must_deliver'.",
)

_log = logging.getLogger("pubsub")


def announce_drops(broker: Any, event: Any, path: DropPath, count: int) -> None:
    """Send ``dropped`` ``count`` times; log and swallow a receiver's exception."""
    if not dropped.receivers:
        return
    for _ in range(count):
        try:
            dropped.send(broker, event=event, path=path)
        except Exception:
            _log.exception("a pubsub.dropped receiver raised; the drop is still counted")
