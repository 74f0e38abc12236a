"""Blinker signals for telemetry hooks; receivers run synchronously in the event loop.

Sent with the emitting ``MessageService`` as sender: ``write_failed`` (a buffered write failed
and will be retried: ``error``, ``message_ids``, ``retry_in``) and ``batch_written`` (a write
transaction committed: ``rows``, ``bytes``, ``seconds``, ``staleness`` per row from its oldest
unwritten accepted change to the commit, ``terminal`` for the synchronous terminal path).
"""

from __future__ import annotations

from blinker import Signal

__all__ = ["batch_written", "write_failed"]

write_failed = Signal("messagestore.write_failed")
batch_written = Signal("messagestore.batch_written")
