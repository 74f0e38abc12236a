"""``instrument(store)``: report one store's counters and write timings to OpenTelemetry.

Counters are observable and read ``store.messages.stats()`` when the reader collects (on the
collecting thread, never waiting for the store's loop), so they equal ``stats()``. Histograms
are fed by this store's ``batch_written`` signal (write duration, terminal write duration, row
staleness). A dispatcher's ``stats()`` fields become ``messagestore.dispatch.<field>``.
``Instrumentation.close()`` detaches the store; the store is held weakly. In full:
docs/MODULES.md.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, Protocol

from opentelemetry.metrics import MeterProvider, get_meter_provider

from .. import MessageService, MessageStats, Store, batch_written
from ..sync import SyncStore
from ._meter import Attributes, MeterInstruments, instruments_of

__all__ = ["Instrumentation", "StatsSource", "instrument"]

_METER_NAME = "messagestore"
_STATS_ATTEMPTS = 5
try:
    _VERSION: str | None = metadata.version("messagestore")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    _VERSION = None


class StatsSource(Protocol):
    """What ``dispatcher=`` takes: anything whose ``stats()`` returns a dataclass of ints."""

    def stats(self) -> Any: ...


class Instrumentation:
    """One store reported on one meter; ``close()`` (or ``uninstrument()``) stops it."""

    def __init__(
        self,
        service: MessageService,
        instruments: MeterInstruments,
        attributes: Attributes,
        dispatcher: StatsSource | None,
    ) -> None:
        self._service = weakref.ref(service)
        self._instruments = instruments
        self._attributes = attributes
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._closed = False
        # Strong: blinker would otherwise drop this bound method as soon as it is created.
        batch_written.connect(self._on_batch, sender=service, weak=False)
        instruments.attach(self)

    @property
    def attributes(self) -> Attributes:
        """The attributes on every data point of this store."""
        return self._attributes

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what the instruments read ---------------------------------------------------------------

    def stats(self) -> MessageStats | None:
        service = self._service()
        if service is None:
            self.close()  # the store is gone
            return None
        # Read on the collecting thread while the store's loop may be changing its state:
        # ``stats()`` counts pending messages by iterating a dict, which raises RuntimeError
        # if the loop resizes it meanwhile. The read is short, so a retry succeeds; the
        # collector is never made to wait for the loop.
        for _ in range(_STATS_ATTEMPTS - 1):
            try:
                return service.stats()
            except RuntimeError:
                continue
        return service.stats()

    def dispatch_value(self, field: str) -> int | None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return None
        value = getattr(dispatcher.stats(), field, None)
        return value if type(value) is int else None

    def _on_batch(
        self, sender: object, *, seconds: float, staleness: list[float], terminal: bool, **_: Any
    ) -> None:
        instruments, attributes = self._instruments, self._attributes
        instruments.write_duration.record(seconds, attributes)
        if terminal:
            instruments.terminal_duration.record(seconds, attributes)
        record = instruments.staleness.record
        for age in staleness:
            record(age, attributes)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reporting this store: disconnect the receiver, leave the callbacks. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        batch_written.disconnect(self._on_batch)
        self._instruments.detach(self)
        self._dispatcher = None

    def uninstrument(self) -> None:
        """The same as ``close()``."""
        self.close()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "reporting"
        return f"<Instrumentation {state} attributes={dict(self._attributes)!r}>"


def instrument(
    store: Store | SyncStore,
    *,
    meter_provider: MeterProvider | None = None,
    dispatcher: StatsSource | None = None,
    attributes: Mapping[str, str | bool | int | float] | None = None,
) -> Instrumentation:
    """Report ``store``'s counters and write timings as OpenTelemetry metrics.

    ``store`` is an asyncio ``Store`` or a blocking ``messagestore.sync.SyncStore``.
    ``meter_provider`` defaults to the global one. ``dispatcher`` is an object whose
    ``stats()`` returns a dataclass of int counters, each exported as
    ``messagestore.dispatch.<field>``. ``attributes`` are put on every data point; give
    stores that report to one provider distinct attributes, or their values are summed.
    Returns the ``Instrumentation``; ``close()`` it to stop.
    """
    service = _message_service(store)
    checked = _attributes(attributes)
    fields = _dispatch_fields(dispatcher)
    provider = get_meter_provider() if meter_provider is None else meter_provider
    instruments = instruments_of(provider.get_meter(_METER_NAME, _VERSION))
    for field in fields:
        instruments.add_dispatch_counter(
            field.name,
            unit=str(field.metadata.get("unit", "1")),
            description=str(field.metadata.get("description", f"Dispatcher: {field.name}.")),
            monotonic=bool(field.metadata.get("monotonic", True)),
        )
    return Instrumentation(service, instruments, checked, dispatcher)


def _message_service(store: object) -> MessageService:
    if isinstance(store, Store):
        return store.messages
    if isinstance(store, SyncStore):
        return store._store.messages
    raise TypeError(
        f"instrument() takes a messagestore Store or sync.SyncStore, not {type(store).__name__}"
    )


def _attributes(attributes: object) -> dict[str, str | bool | int | float]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    checked: dict[str, str | bool | int | float] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"attribute names must be non-empty strings, not {key!r}")
        if not isinstance(value, str | bool | int | float):
            raise TypeError(
                f"attribute {key!r} must be a str, bool, int or float, not {type(value).__name__}"
            )
        checked[key] = value
    return checked


def _dispatch_fields(dispatcher: object) -> list[dataclasses.Field[Any]]:
    if dispatcher is None:
        return []
    stats_method = getattr(dispatcher, "stats", None)
    if not callable(stats_method):
        raise TypeError(f"dispatcher has no stats() method: {dispatcher!r}")
    stats = stats_method()
    if not dataclasses.is_dataclass(stats) or isinstance(stats, type):
        raise TypeError(
            f"dispatcher.stats() must return a dataclass instance, not {type(stats).__name__}"
        )
    return [f for f in dataclasses.fields(stats) if type(getattr(stats, f.name)) is int]
