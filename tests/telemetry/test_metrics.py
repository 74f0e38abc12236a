"""OpenTelemetry metrics (``messagestore.telemetry``), read back with the SDK's in-memory reader.

After a known workload the counters equal ``stats()``, the histograms hold one point per
transaction (and per row for staleness); two stores never mix; uninstrumenting stops the
reports; a dispatcher's counters are exported; ``import messagestore`` never imports
OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import re
import subprocess
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
)

from messagestore import (
    FinishReason,
    MessageStats,
    Role,
    Store,
    open_store,
)
from messagestore import sync as blocking
from messagestore.dispatch import (
    Dispatcher,
    QueueConfig,
    Turn,
    TurnOutcome,
)
from messagestore.telemetry import DROP_PATH, INSTRUMENTS, instrument
from messagestore.testing import set_must_deliver_timeout
from pubsub import Subscription
from tests.support.paths import ROOT

README = ROOT / "README.md"


@dataclass
class Meter:
    """A provider with an in-memory reader, and what it collected."""

    provider: MeterProvider
    reader: InMemoryMetricReader

    def collect(self) -> dict[str, tuple[str, list[Any]]]:
        """Metric name -> (unit, data points)."""
        data = self.reader.get_metrics_data()
        found: dict[str, tuple[str, list[Any]]] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "messagestore"
                for metric in scope.metrics:
                    found[metric.name] = (metric.unit or "", list(metric.data.data_points))
        return found


def new_meter() -> Meter:
    reader = InMemoryMetricReader()
    return Meter(MeterProvider(metric_readers=[reader], shutdown_on_exit=False), reader)


@pytest.fixture
def meter() -> Iterator[Meter]:
    made = new_meter()
    yield made
    made.provider.shutdown()


def values(
    collected: dict[str, tuple[str, list[Any]]], **attributes: Any
) -> dict[str, dict[str, Any]]:
    """Counter values by name, then by the DROP_PATH attribute ('' without), for one store."""
    out: dict[str, dict[str, Any]] = {}
    for name, (_, points) in collected.items():
        for point in points:
            attrs = dict(point.attributes or {})
            path = attrs.pop(DROP_PATH, "")
            if attrs != attributes or isinstance(point, HistogramDataPoint):
                continue
            out.setdefault(name, {})[path] = point.value
    return out


def counts(collected: dict[str, tuple[str, list[Any]]], **attributes: Any) -> dict[str, int]:
    """Histogram point counts by name, for one store."""
    return {
        name: point.count
        for name, (_, points) in collected.items()
        for point in points
        if isinstance(point, HistogramDataPoint) and dict(point.attributes or {}) == attributes
    }


def expected_counters(stats: MessageStats) -> dict[str, dict[str, int]]:
    broker = stats.broker
    return {
        "messagestore.update.accepted": {"": stats.updates_accepted},
        "messagestore.update.coalesced": {"": stats.deltas_coalesced},
        "messagestore.write.transactions": {"": stats.transactions},
        "messagestore.write.rows": {"": stats.rows_written},
        "messagestore.write.terminal.rows": {"": stats.terminal_writes},
        "messagestore.write.io": {"": stats.bytes_written},
        "messagestore.write.failures": {"": stats.write_failures},
        "messagestore.write.pending": {"": stats.pending_messages},
        "messagestore.buffer.messages": {"": stats.buffered_messages},
        "messagestore.events.published": {"": broker.published},
        "messagestore.events.delivered": {"": broker.delivered},
        "messagestore.events.conflated": {"": broker.conflated},
        "messagestore.events.dropped": {
            "lossy": broker.dropped,
            "must_deliver": broker.must_deliver_dropped,
        },
        "messagestore.events.subscriptions": {"": broker.subscribers},
    }


async def workload(store: Store, messages: int = 2, deltas: int = 12) -> Subscription[Any]:
    """Stream ``messages`` replies past a subscriber that never reads (so events get lost)."""
    set_must_deliver_timeout(store, 0.01)
    stuck = store.messages.subscribe(buffer_size=1)
    session = await store.sessions.create("workload")
    for _ in range(messages):
        reply = await store.messages.create(session.id, role=Role.ASSISTANT)
        for i in range(deltas):
            reply.append_text(f"{i} ")
            await store.messages.update(reply)
            if i % 4 == 3:
                await store.messages.flush(reply.id)  # a few intermediate transactions
        reply.add_finish(FinishReason.END_TURN)
        await store.messages.update(reply)
    await store.messages.flush_all()
    return stuck


# -- the counters and histograms -----------------------------------------------------------------


async def test_counters_equal_stats_and_histograms_get_points(store: Store, meter: Meter) -> None:
    with instrument(store, meter_provider=meter.provider):
        stuck = await workload(store)
        stats = store.messages.stats()
        collected = meter.collect()
    assert values(collected) == expected_counters(stats)
    assert stats.updates_accepted == 2 * 13 and stats.rows_written >= 2 * 4
    assert stats.broker.must_deliver_dropped >= 1  # the stuck subscriber lost events
    assert counts(collected) == {
        "messagestore.write.duration": stats.transactions,
        "messagestore.write.terminal.duration": 2,
        "messagestore.write.staleness": stats.rows_written,
    }
    for _, points in collected.values():
        for point in points:
            if isinstance(point, HistogramDataPoint):
                assert point.sum >= 0 and point.max < 60
    stuck.close()


async def test_units_and_kinds_follow_the_catalogue(store: Store, meter: Meter) -> None:
    instrument(store, meter_provider=meter.provider)
    (await workload(store, messages=1)).close()
    collected = meter.collect()
    assert {name: unit for name, (unit, _) in collected.items()} == {
        i.name: i.unit for i in INSTRUMENTS
    }
    for spec in INSTRUMENTS:
        assert re.fullmatch(r"messagestore(\.[a-z_]+)+", spec.name), spec.name


async def test_a_discarded_handle_keeps_reporting(store: Store, meter: Meter) -> None:
    instrument(store, meter_provider=meter.provider)  # the handle is not kept
    gc.collect()
    (await workload(store, messages=1)).close()
    collected = meter.collect()
    assert counts(collected)["messagestore.write.duration"] == store.messages.stats().transactions


async def test_counters_include_what_happened_before_instrument(store: Store, meter: Meter) -> None:
    stuck = await workload(store, messages=1)
    instrumentation = instrument(store, meter_provider=meter.provider)
    collected = meter.collect()
    assert values(collected) == expected_counters(store.messages.stats())
    assert counts(collected) == {}  # timings are recorded from instrument() on
    instrumentation.close()
    stuck.close()


def test_a_blocking_store_is_instrumented_the_same_way(db_url: str, meter: Meter) -> None:
    with blocking.open_store(db_url) as store, instrument(store, meter_provider=meter.provider):
        session = store.sessions.create("sync")
        reply = store.messages.create(session.id, role=Role.ASSISTANT)
        for word in ["one", "two", "three"]:
            reply.append_text(word)
            store.messages.update(reply)
        reply.add_finish(FinishReason.END_TURN)
        store.messages.update(reply)
        stats = store.messages.stats()
        collected = meter.collect()
    assert values(collected) == expected_counters(stats)
    assert counts(collected)["messagestore.write.terminal.duration"] == 1


async def test_two_stores_do_not_mix(db_url: str, meter: Meter) -> None:
    # One provider each, and both on one more provider, told apart by attributes.
    meter_b, shared = new_meter(), new_meter()
    async with open_store(db_url) as a, open_store(db_url) as b:
        instrument(a, meter_provider=meter.provider)
        instrument(b, meter_provider=meter_b.provider)
        instrument(a, meter_provider=shared.provider, attributes={"store": "a"})
        instrument(b, meter_provider=shared.provider, attributes={"store": "b"})
        stuck_a = await workload(a, messages=3)
        stuck_b = await workload(b, messages=1, deltas=5)
        stats_a, stats_b = a.messages.stats(), b.messages.stats()
        assert stats_a.updates_accepted != stats_b.updates_accepted
        for collected, stats in ((meter.collect(), stats_a), (meter_b.collect(), stats_b)):
            assert values(collected) == expected_counters(stats)
            assert counts(collected)["messagestore.write.duration"] == stats.transactions
        both = shared.collect()
        for name, stats in (("a", stats_a), ("b", stats_b)):
            assert values(both, store=name) == expected_counters(stats)
            assert counts(both, store=name)["messagestore.write.staleness"] == stats.rows_written
        stuck_a.close()
        stuck_b.close()
    meter_b.provider.shutdown()
    shared.provider.shutdown()


async def test_uninstrument_stops_the_reports(store: Store, meter: Meter) -> None:
    instrumentation = instrument(store, meter_provider=meter.provider)
    stuck = await workload(store, messages=1)
    before = counts(meter.collect())
    instrumentation.uninstrument()
    instrumentation.close()  # idempotent
    assert instrumentation.closed
    stuck.close()
    stuck = await workload(store, messages=1)
    collected = meter.collect()
    assert values(collected) == {}  # observable counters report nothing for it
    assert counts(collected) == before  # no new histogram points
    # Instrumenting again on the same provider reports again (the instruments are reused).
    with instrument(store, meter_provider=meter.provider):
        assert values(meter.collect()) == expected_counters(store.messages.stats())
    stuck.close()


async def test_instrumenting_keeps_no_store_alive(sqlite_url: str, meter: Meter) -> None:
    store = await open_store(sqlite_url)
    instrumentation = instrument(store, meter_provider=meter.provider)
    await store.close()
    collected = store.messages.stats()
    assert values(meter.collect()) == expected_counters(collected)
    alive = weakref.ref(store)
    del store
    gc.collect()
    assert alive() is None
    assert values(meter.collect()) == {}
    assert instrumentation.closed


def test_instrument_with_the_global_provider_does_not_fail(store: Store) -> None:
    # No SDK is installed globally in the tests: the API's no-op meter takes the calls.
    with instrument(store) as instrumentation:
        assert not instrumentation.closed


# -- the dispatcher --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchStats:
    """A stand-in for the dispatcher's stats (the real one plugs in the same way)."""

    submitted: int
    turns_completed: int
    running: int = field(metadata={"monotonic": False, "unit": "{turn}"})
    note: str = "not a counter"


class StandInDispatcher:
    def __init__(self) -> None:
        self.current = DispatchStats(submitted=0, turns_completed=0, running=0)

    def stats(self) -> DispatchStats:
        return self.current


async def test_dispatcher_counters_are_exported(store: Store, meter: Meter) -> None:
    dispatcher = StandInDispatcher()
    with instrument(store, meter_provider=meter.provider, dispatcher=dispatcher):
        dispatcher.current = DispatchStats(submitted=7, turns_completed=5, running=2)
        collected = meter.collect()
    dispatch = {k: v for k, v in collected.items() if k.startswith("messagestore.dispatch.")}
    assert {
        name: (unit, [p.value for p in points]) for name, (unit, points) in dispatch.items()
    } == {
        "messagestore.dispatch.submitted": ("1", [7]),
        "messagestore.dispatch.turns_completed": ("1", [5]),
        "messagestore.dispatch.running": ("{turn}", [2]),
    }
    assert values(meter.collect()) == {}  # closed: neither store nor dispatcher reported


async def test_the_real_dispatcher_exports_totals_and_current_values(
    store: Store, meter: Meter
) -> None:
    async def run_turn(turn: Turn) -> None:
        reply = await turn.reply(model="toy")
        reply.append_text("ok")
        reply.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(reply)

    async with Dispatcher(store, run_turn, QueueConfig(debounce=0.01)) as dispatcher:
        with instrument(store, meter_provider=meter.provider, dispatcher=dispatcher):
            session = await store.sessions.create("dispatched")
            receipt = await dispatcher.submit(session.id, "hello")
            async with asyncio.timeout(10):
                assert await receipt.outcome() is TurnOutcome.COMPLETED
            metrics = {
                metric.name: metric
                for resource in meter.reader.get_metrics_data().resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
            }
    submitted = metrics["messagestore.dispatch.inputs_submitted"]
    assert submitted.unit == "{input}" and submitted.data.is_monotonic
    assert [p.value for p in submitted.data.data_points] == [1]
    assert [p.value for p in metrics["messagestore.dispatch.turns_completed"].data.data_points] == [
        1
    ]
    running = metrics["messagestore.dispatch.running"]
    assert running.unit == "{turn}" and not running.data.is_monotonic  # a current value
    assert not metrics["messagestore.dispatch.pending"].data.is_monotonic


# -- bad input -------------------------------------------------------------------------------------


def test_bad_arguments_are_refused(store: Store) -> None:
    with pytest.raises(TypeError, match=r"Store or sync\.SyncStore"):
        instrument(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        instrument(store, attributes=["x"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attribute 'x'"):
        instrument(store, attributes={"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="no stats"):
        instrument(store, dispatcher=object())  # type: ignore[arg-type]

    class NotDataclass:
        def stats(self) -> dict[str, int]:
            return {"a": 1}

    with pytest.raises(TypeError, match="dataclass instance"):
        instrument(store, dispatcher=NotDataclass())
    assert dataclasses.is_dataclass(DispatchStats)


# -- packaging -------------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_messagestore_does_not_import_opentelemetry() -> None:
    done = _python(
        "import sys, messagestore, messagestore.sync\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_extra_the_error_names_it() -> None:
    done = _python(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "try:\n"
        "    import messagestore.telemetry\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'messagestore[otel]'" in done.stdout


def test_the_readme_lists_every_instrument() -> None:
    text = README.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(messagestore\.[a-z_.]+)` \| [^|]+ \| `([^`]+)` \|", text, re.M))
    assert rows == {i.name: i.unit for i in INSTRUMENTS}


async def test_receivers_run_only_for_their_own_store(db_url: str, meter: Meter) -> None:
    async with open_store(db_url) as watched, open_store(db_url) as other:
        with instrument(watched, meter_provider=meter.provider):
            stuck = await workload(other, messages=2)
            assert counts(meter.collect()) == {}
            assert values(meter.collect()) == expected_counters(watched.messages.stats())
            stuck.close()
