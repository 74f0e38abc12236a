"""Blinker signals for telemetry hooks.

Connect a receiver to log or export what the store does; receivers run synchronously in the
event loop, so keep them quick. Every signal is sent with the emitting ``MessageService`` (or
the broker, for ``pubsub.dropped``) as sender.

``write_failed``
    A buffered write failed and will be retried. Keyword arguments: ``error`` (the exception),
    ``message_ids`` (the ids whose state is kept for the retry), ``retry_in`` (seconds).
``batch_written``
    A write transaction committed. Keyword arguments: ``rows``, ``bytes``, ``seconds`` (the
    transaction's duration), ``staleness`` (for each row, seconds from its oldest unwritten
    accepted change to the commit), ``terminal`` (True for the synchronous terminal path).
"""

from __future__ import annotations

from blinker import Signal

__all__ = ["batch_written", "write_failed"]

write_failed = Signal("messagestore.write_failed")
batch_written = Signal("messagestore.batch_written")
