"""The instruments of one ``Meter``, created once and shared by every store reported on it.

OpenTelemetry cannot remove an observable instrument or its callback, and a second
registration of a name on the same meter returns the first instrument without the new
callback. So each meter gets one ``MeterInstruments`` (kept in a weak map, released with the
meter), whose callbacks read every source attached to it at collection time. ``attach`` and
``detach`` are all that instrumenting and uninstrumenting a store do to it.

Sources with the same attributes are summed into one data point (OpenTelemetry forbids two
observations of one attribute set in a callback); give stores that share a meter distinct
attributes to tell them apart.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.util.types import AttributeValue

from .. import MessageStats
from ._catalogue import DISPATCH_PREFIX, DURATION_BUCKETS, HISTOGRAMS, STATS_INSTRUMENTS, Reading

__all__ = ["MeterInstruments", "Source", "instruments_of"]

Attributes = Mapping[str, AttributeValue]


class Source(Protocol):
    """One instrumented store, as the callbacks see it."""

    @property
    def attributes(self) -> Attributes: ...

    def stats(self) -> MessageStats | None:
        """The store's counters, or None if it is gone."""

    def dispatch_value(self, field: str) -> int | None:
        """The dispatcher's counter ``field``, or None if it has none."""


class MeterInstruments:
    """Every instrument on one meter, and the sources its callbacks read."""

    def __init__(self, meter: Meter) -> None:
        self._meter = weakref.ref(meter)  # the meter holds us (through the callbacks)
        self._lock = threading.Lock()
        self._sources: tuple[Source, ...] = ()
        self._dispatch_fields: set[str] = set()
        for spec in STATS_INSTRUMENTS:
            assert spec.read is not None
            create = (
                meter.create_observable_counter
                if spec.kind == "counter"
                else meter.create_observable_up_down_counter
            )
            create(
                spec.name,
                callbacks=[functools.partial(self._observe_stats, spec.read)],
                unit=spec.unit,
                description=spec.description,
            )
        duration, terminal, staleness = (
            meter.create_histogram(
                spec.name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            for spec in HISTOGRAMS
        )
        self.write_duration = duration
        self.terminal_duration = terminal
        self.staleness = staleness

    # -- sources ---------------------------------------------------------------------------------

    def attach(self, source: Source) -> None:
        with self._lock:
            self._sources = (*self._sources, source)

    def detach(self, source: Source) -> None:
        with self._lock:
            self._sources = tuple(s for s in self._sources if s is not source)

    def add_dispatch_counter(
        self, field: str, *, unit: str, description: str, monotonic: bool
    ) -> None:
        """Create ``messagestore.dispatch.<field>`` on this meter unless it exists."""
        meter = self._meter()
        with self._lock:
            if meter is None or field in self._dispatch_fields:
                return
            self._dispatch_fields.add(field)
        create = (
            meter.create_observable_counter
            if monotonic
            else meter.create_observable_up_down_counter
        )
        create(
            DISPATCH_PREFIX + field,
            callbacks=[functools.partial(self._observe_dispatch, field)],
            unit=unit,
            description=description,
        )

    # -- callbacks (run on the thread that collects) ---------------------------------------------

    def _observe_stats(
        self, read: Callable[[MessageStats], Reading], options: CallbackOptions
    ) -> Iterable[Observation]:
        totals: dict[frozenset[tuple[str, AttributeValue]], int] = {}
        for source in self._sources:
            stats = source.stats()
            if stats is None:
                continue
            for extra, value in read(stats):
                key = frozenset({**source.attributes, **extra}.items())
                totals[key] = totals.get(key, 0) + value
        return [Observation(value, dict(key)) for key, value in totals.items()]

    def _observe_dispatch(self, field: str, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[frozenset[tuple[str, AttributeValue]], int] = {}
        for source in self._sources:
            value = source.dispatch_value(field)
            if value is not None:
                key = frozenset(source.attributes.items())
                totals[key] = totals.get(key, 0) + value
        return [Observation(value, dict(key)) for key, value in totals.items()]


_by_meter: weakref.WeakKeyDictionary[Meter, MeterInstruments] = weakref.WeakKeyDictionary()
_by_meter_lock = threading.Lock()


def instruments_of(meter: Meter) -> MeterInstruments:
    """The one ``MeterInstruments`` of ``meter``, created on first use."""
    with _by_meter_lock:
        instruments = _by_meter.get(meter)
        if instruments is None:
            instruments = _by_meter[meter] = MeterInstruments(meter)
        return instruments
