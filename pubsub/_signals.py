"""The ``pubsub.dropped`` blinker signal: one notification per counted drop.

Contract: the signal fires once for every (event, subscription) pair counted in
``drop_count`` or ``must_deliver_drop_count``, with ``sender`` = the ``Broker`` and keyword
arguments ``event=`` (the ``Event``) and ``path=``:

* ``"lossy"``: ``publish`` found no place for the event; that subscription lost it.
* ``"must_deliver"``: a must-deliver event was not admitted before the deadline (or its
  publisher stopped waiting). The subscription still has it queued as its key's newest state
  (the drop is telemetry: the subscriber was too slow), except when its overflow was at its
  bound and the event could not be queued at all (then ``Subscription.lost`` counts it too).

Connect to one broker with ``dropped.connect(receiver, sender=broker)``, or to all of them
without ``sender``. It fires after the broker's state and counters are consistent (after the
fan-out, after a must-deliver wait has been settled), on the broker's own thread. A receiver
that raises is logged on the ``pubsub`` logger and otherwise ignored: telemetry never breaks a
publisher. Conflation is not a drop and does not fire the signal.
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
