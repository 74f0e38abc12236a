"""OpenTelemetry metrics of a store (see ``messagestore.telemetry``); imports OpenTelemetry."""

from ._catalogue import DROP_PATH, INSTRUMENTS, Instrument
from ._instrument import Instrumentation, StatsSource, instrument

__all__ = ["DROP_PATH", "INSTRUMENTS", "Instrument", "Instrumentation", "StatsSource", "instrument"]
