"""Every instrument ``instrument()`` creates: name, kind, unit, description, and its source.

Naming follows OpenTelemetry's semantic-conventions style: lowercase dot-separated namespaces
under ``messagestore.``, no unit in the name, units in UCUM (``s``, ``By``) or as an annotation
in braces for counts (``{row}``, ``{event}``). Durations are ``*.duration`` histograms in
seconds. Counts of things that exist now (pending messages, open subscriptions) are
UpDownCounters, not gauges, because they add up across stores; totals since the store opened
are Counters.

This module is plain data (no OpenTelemetry import), so the README's table and the tests can
read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .. import MessageStats

__all__ = [
    "DISPATCH_PREFIX",
    "DROP_PATH",
    "DURATION_BUCKETS",
    "HISTOGRAMS",
    "INSTRUMENTS",
    "STATS_INSTRUMENTS",
    "Instrument",
    "Reading",
]

Kind = Literal["counter", "updowncounter", "histogram"]

# (extra attributes, value) pairs that one store contributes to one instrument.
Reading = list[tuple[dict[str, str], int]]

DROP_PATH = "messagestore.drop.path"
"""Attribute of ``messagestore.events.dropped``: ``lossy`` or ``must_deliver``."""

DISPATCH_PREFIX = "messagestore.dispatch."

# Seconds; the write window is 0.033 s by default, so the small end is fine-grained.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True, slots=True)
class Instrument:
    """One instrument: what it is called, what it measures, and where the value comes from."""

    name: str
    kind: Kind
    unit: str
    description: str
    source: str
    """What feeds it, for the documentation: a ``MessageStats`` field or a signal argument."""
    read: Callable[[MessageStats], Reading] | None = None
    """For observable instruments: the readings of one store's ``stats()``."""


def _field(name: str) -> Callable[[MessageStats], Reading]:
    def read(stats: MessageStats) -> Reading:
        return [({}, getattr(stats, name))]

    return read


def _broker_field(name: str) -> Callable[[MessageStats], Reading]:
    def read(stats: MessageStats) -> Reading:
        return [({}, getattr(stats.broker, name))]

    return read


def _dropped(stats: MessageStats) -> Reading:
    return [
        ({DROP_PATH: "lossy"}, stats.broker.dropped),
        ({DROP_PATH: "must_deliver"}, stats.broker.must_deliver_dropped),
    ]


STATS_INSTRUMENTS = (
    Instrument(
        "messagestore.update.accepted",
        "counter",
        "{update}",
        "Changes accepted by MessageService.update().",
        "stats().updates_accepted",
        _field("updates_accepted"),
    ),
    Instrument(
        "messagestore.update.coalesced",
        "counter",
        "{update}",
        "Accepted changes that replaced a buffered one before it was written.",
        "stats().deltas_coalesced",
        _field("deltas_coalesced"),
    ),
    Instrument(
        "messagestore.write.transactions",
        "counter",
        "{transaction}",
        "Write transactions committed by the write path.",
        "stats().transactions",
        _field("transactions"),
    ),
    Instrument(
        "messagestore.write.rows",
        "counter",
        "{row}",
        "Message rows written by the write path.",
        "stats().rows_written",
        _field("rows_written"),
    ),
    Instrument(
        "messagestore.write.terminal.rows",
        "counter",
        "{row}",
        "Rows written with a terminal change (finished, tool call added or finished, ...).",
        "stats().terminal_writes",
        _field("terminal_writes"),
    ),
    Instrument(
        "messagestore.write.io",
        "counter",
        "By",
        "Bytes of message data written.",
        "stats().bytes_written",
        _field("bytes_written"),
    ),
    Instrument(
        "messagestore.write.failures",
        "counter",
        "{failure}",
        "Write attempts that failed (their changes are kept and retried).",
        "stats().write_failures",
        _field("write_failures"),
    ),
    Instrument(
        "messagestore.write.pending",
        "updowncounter",
        "{message}",
        "Messages with an accepted change not yet written.",
        "stats().pending_messages",
        _field("pending_messages"),
    ),
    Instrument(
        "messagestore.buffer.messages",
        "updowncounter",
        "{message}",
        "Messages the write path holds in memory.",
        "stats().buffered_messages",
        _field("buffered_messages"),
    ),
    Instrument(
        "messagestore.events.published",
        "counter",
        "{event}",
        "Message events published to subscribers.",
        "stats().broker.published",
        _broker_field("published"),
    ),
    Instrument(
        "messagestore.events.delivered",
        "counter",
        "{event}",
        "(event, subscriber) pairs where the event entered the subscriber's buffer.",
        "stats().broker.delivered",
        _broker_field("delivered"),
    ),
    Instrument(
        "messagestore.events.conflated",
        "counter",
        "{event}",
        "Intermediate events merged into a queued one of the same message (not lost).",
        "stats().broker.conflated",
        _broker_field("conflated"),
    ),
    Instrument(
        "messagestore.events.dropped",
        "counter",
        "{event}",
        f"(event, subscriber) pairs lost to a full subscriber; attribute {DROP_PATH}.",
        "stats().broker.dropped, .must_deliver_dropped",
        _dropped,
    ),
    Instrument(
        "messagestore.events.subscriptions",
        "updowncounter",
        "{subscription}",
        "Open subscriptions to message events.",
        "stats().broker.subscribers",
        _broker_field("subscribers"),
    ),
)

HISTOGRAMS = (
    Instrument(
        "messagestore.write.duration",
        "histogram",
        "s",
        "Duration of each write transaction of the write path.",
        "batch_written: seconds",
    ),
    Instrument(
        "messagestore.write.terminal.duration",
        "histogram",
        "s",
        "Duration of each write transaction that carried a terminal change.",
        "batch_written: seconds, when terminal",
    ),
    Instrument(
        "messagestore.write.staleness",
        "histogram",
        "s",
        "Per row written: seconds from its oldest unwritten accepted change to the commit.",
        "batch_written: staleness",
    ),
)

INSTRUMENTS = STATS_INSTRUMENTS + HISTOGRAMS
