"""OpenTelemetry metrics for a store: ``instrument(store)``. Needs ``messagestore[otel]``.

::

    instrumentation = instrument(store)              # the global MeterProvider, or meter_provider=
    instrumentation.close()                          # or uninstrument(); `with` works too

Counters mirror ``store.messages.stats()``; histograms time each write transaction, each
terminal one, and each row's staleness. ``INSTRUMENTS`` lists them all; README, "Telemetry",
has the table. Only this module imports OpenTelemetry: ``import messagestore`` never does.
"""

try:
    from ._telemetry import (
        DROP_PATH,
        INSTRUMENTS,
        Instrument,
        Instrumentation,
        StatsSource,
        instrument,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    if not (exc.name or "").startswith("opentelemetry"):
        raise
    raise ModuleNotFoundError(
        "messagestore.telemetry needs OpenTelemetry: pip install 'messagestore[otel]'",
        name=exc.name,
    ) from exc

__all__ = ["DROP_PATH", "INSTRUMENTS", "Instrument", "Instrumentation", "StatsSource", "instrument"]
