"""One benchmark cell, run in its own process: ``python -m bench.cell SPEC_JSON RESULT_PATH``.

A fresh process per cell keeps the event loop, the garbage collector and the peak RSS of one
strategy from leaking into the next. The cell writes its figures as JSON to ``RESULT_PATH``:
once with ``"phase": "window"`` as soon as the streaming is over (so a parent that has to cut
off a slow teardown still has the window's figures), and again with ``"phase": "done"`` at the
end.

Stream cell (``kind="stream"``): ``run_workload`` from ``messagestore._demo`` with
pure text streams (no reasoning, no tool calls, one reply per stream that grows for the whole
window), its opening creates done before the clock starts (``warm_up``). Measured:

* the window starts at the driver's first tick and lasts ``duration`` seconds;
* update latency: every non-terminal ``update()`` call (all of them fall in the window);
* deltas/s: those calls ÷ ``duration``; offered: ``streams x rate``;
* transactions and rows per second: the store's counters over the window;
* staleness: the ``staleness`` of every non-terminal ``batch_written`` whose write started
  within the window (for write-through that is accept → commit of the synchronous write);
* event-loop lag: overshoot of a ``lag_interval`` sleep, repeated through the window;
* bytes written (the whole run, terminal writes included) ÷ the parts stored at the end
  (logical write amplification);
* physical bytes the database wrote from the window's start to the end of the final flush:
  SQLite, every byte this process passed to ``write()`` (WAL frames, checkpoints into the
  database file; ``wchar`` of ``/proc/self/io``); PostgreSQL, the server's WAL written
  (``pg_current_wal_lsn()`` difference — server-wide, so run it on a quiet server); divided
  by the UTF-8 bytes of text stored (physical amplification);
* create() and terminal update() latency: a probe creates a message and finishes it every
  ``_PROBE_EVERY`` seconds through the window, beside the streams;
* CPU per accepted delta over the window, all in, and its parts (``update()``, the tick, the
  feed's announce, the PostgreSQL backends apart): ``bench.cpu``.

Flush cell (``kind="flush"``): ``flush_messages`` messages with about 1 KB of text each, every
one given a pending non-terminal change (the debounce is an hour, so no tick fires), then
``flush_all()`` timed; repeated ``flush_repeats`` times. The updates that made the changes
pending are timed too: an ``update()`` latency on an otherwise idle loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.cpu import CpuBudget
from bench.per_message import commit_per_message
from bench.spec import CellSpec, Strategy, store_options, writes_whole
from bench.stats import percentiles
from messagestore import FinishReason, Role, Store, Text, batch_written, open_store
from messagestore._codec import encode_parts
from messagestore._demo import StreamStats, WorkloadConfig, run_workload

__all__ = ["WINDOW_OPEN", "main", "run_cell", "run_flush_cell", "run_stream_cell"]

WINDOW_OPEN = "msbench: window open"

_PROBE_EVERY = 0.25

# One reply per stream that never runs out of tokens: it streams until the window closes.
_ENDLESS_REPLY = (10**9, 10**9)
_FLUSH_DEBOUNCE = 3600.0
_FLUSH_TEXT = "lorem ipsum " * 85  # about 1 KB


class _Recorder:
    """Collects ``batch_written`` figures (a receiver runs in the loop: keep it cheap)."""

    def __init__(self) -> None:
        # (commit time, write duration, staleness list) of non-terminal batches
        self.batches: list[tuple[float, float, list[float]]] = []
        self.terminal_batches = 0

    def __call__(self, _sender: object, **kw: Any) -> None:
        if kw["terminal"]:
            self.terminal_batches += 1
        else:
            self.batches.append((time.monotonic(), kw["seconds"], kw["staleness"]))

    def staleness_within(self, start: float, end: float) -> list[float]:
        """Staleness of rows whose write started in [start, end]."""
        samples: list[float] = []
        for committed, seconds, staleness in self.batches:
            if start <= committed - seconds <= end:
                samples.extend(staleness)
        return samples


class _Window:
    """The measured window: from the driver's first tick for ``duration`` seconds."""

    def __init__(self, store: Store, duration: float, lag_interval: float) -> None:
        self._store = store
        self._duration = duration
        self._lag_interval = lag_interval
        self.start: float | None = None
        self.end: float | None = None
        self.start_counters: tuple[int, int] = (0, 0)
        self.end_counters: tuple[int, int] = (0, 0)
        self.lag: list[float] = []
        self._monitor: asyncio.Task[None] | None = None
        # Run when the window opens (the physical-bytes mark, the latency probe).
        self.on_start: list[Callable[[], Any]] = []
        # Run when the window closes (the CPU budget's end marks).
        self.on_end: list[Callable[[], Any]] = []
        self._started: list[asyncio.Task[Any]] = []

    def _counters(self) -> tuple[int, int]:
        stats = self._store.messages.stats()
        return stats.transactions, stats.rows_written

    def on_tick(self, _stats: StreamStats) -> None:
        if self.start is not None:
            return
        loop = asyncio.get_running_loop()
        self.start = time.monotonic()
        self.start_counters = self._counters()
        self._monitor = loop.create_task(self._watch_lag(), name="bench-lag-monitor")
        for hook in self.on_start:
            started = hook()
            if asyncio.iscoroutine(started):
                self._started.append(loop.create_task(started))
        loop.call_later(self._duration, self.close)

    def close(self) -> None:
        """End the window (idempotent; also called after the workload as a fallback)."""
        if self.end is not None or self.start is None:
            return
        self.end = time.monotonic()
        self.end_counters = self._counters()
        loop = asyncio.get_running_loop()
        for hook in self.on_end:
            ended = hook()
            if asyncio.iscoroutine(ended):
                self._started.append(loop.create_task(ended))
        if self._monitor is not None:
            self._monitor.cancel()

    async def wait_closed(self) -> None:
        if self._monitor is not None:
            await asyncio.gather(self._monitor, return_exceptions=True)
        if self._started:
            await asyncio.gather(*self._started)

    async def _watch_lag(self) -> None:
        interval = self._lag_interval
        while True:
            before = time.perf_counter()
            await asyncio.sleep(interval)
            self.lag.append(time.perf_counter() - before - interval)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    On Linux this is ``VmHWM`` of this process image: ``ru_maxrss`` would also count the
    parent's pages that the child had between fork and exec.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def _us_from_ns(value: float | None) -> float | None:
    return None if value is None else value / 1e3


async def _stored(store: Store) -> tuple[int, int]:
    """(characters of parts JSON, UTF-8 bytes of text) stored for the assistant messages the
    workload updated, each read back whole (base and appends)."""
    parts = text = 0
    for session in await store.sessions.list():
        for message in await store.messages.list(session.id):
            if message.role is Role.ASSISTANT and session.title != _PROBE_SESSION:
                parts += len(encode_parts(message.parts))
                text += len(message.text.encode("utf-8", "surrogatepass"))
    return parts, text


class _Physical:
    """Bytes the database writes (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._postgres = store._database.dialect == "postgresql"
        self._start: int | None = None

    async def _now(self) -> int | None:
        if self._postgres:
            async with self._store.engine.connect() as conn:
                query = text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
                return int((await conn.execute(query)).scalar_one())
        return _bytes_written_by_this_process()

    async def start(self) -> None:
        self._start = await self._now()

    async def written(self) -> int | None:
        end = await self._now()
        if end is None or self._start is None:
            return None
        return end - self._start


def _bytes_written_by_this_process() -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return None


_PROBE_SESSION = "latency probe"


class _Probe:
    """Creates a message and finishes it every ``_PROBE_EVERY`` s: create() and terminal
    update() latency under the streams' load. Only samples that end inside the window count:
    after it, the workload finishes every stream at once (one terminal write each), and a
    probe queued behind that burst measures the burst, not the streams."""

    def __init__(self, store: Store, window: _Window) -> None:
        self._store = store
        self._window = window
        self.creates: list[float] = []
        self.terminals: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bench-probe")

    async def _run(self) -> None:
        session = await self._store.sessions.create(_PROBE_SESSION)
        while True:
            await asyncio.sleep(_PROBE_EVERY)
            before = time.perf_counter()
            message = await self._store.messages.create(session.id, role=Role.ASSISTANT)
            created = time.perf_counter()
            message.append_text("probe")
            message.add_finish(FinishReason.END_TURN)
            await self._store.messages.update(message)
            if self._window.end is not None:
                return
            self.creates.append(created - before)
            self.terminals.append(time.perf_counter() - created)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def run_stream_cell(
    spec: CellSpec,
    on_window: Callable[[dict[str, Any]], None] | None = None,
    on_open: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """S text streams at R deltas/s for T seconds; returns the cell's figures. ``on_open``
    runs when the window opens (a profiler attaches then, after the warm-up)."""
    debounce, per_message = store_options(spec.strategy, spec.debounce)
    recorder = _Recorder()
    batch_written.connect(recorder, weak=False)
    started = time.monotonic()
    try:
        async with open_store(spec.url, debounce=debounce) as store:
            if per_message:
                commit_per_message(store)
            store.messages._writer.appends = not writes_whole(spec.strategy)
            window = _Window(store, spec.duration, spec.lag_interval)
            physical = _Physical(store)
            probe = _Probe(store, window)
            budget = CpuBudget()
            budget.install(store)
            window.on_start = [budget.start, budget.server_start, physical.start, probe.start]
            if on_open is not None:
                window.on_start.append(on_open)
            window.on_end = [budget.stop, budget.server_stop]
            config = WorkloadConfig(
                streams=spec.streams,
                duration=spec.duration,
                rate=spec.rate,
                tool_call_probability=0.0,
                reasoning=False,
                seed=spec.seed,
                reply_tokens=_ENDLESS_REPLY,
                warm_up=True,
            )
            try:
                result = await run_workload(store, config, on_tick=window.on_tick)
            finally:
                window.close()
                await window.wait_closed()
                await probe.stop()
            streamed = time.monotonic()
            figures = _window_figures(spec, result.stats, window, recorder)
            figures.update(_latencies(probe))
            figures.update(budget.figures(figures["deltas"], figures["window_s"]))
            # The probe's own terminal writes are not the streams' transactions.
            figures["transactions"] -= len(probe.terminals)
            figures["rows"] -= len(probe.terminals)
            figures["transactions_per_s"] = figures["transactions"] / figures["window_s"]
            figures["rows_per_s"] = figures["rows"] / figures["window_s"]
            figures["warm_up_s"] = (window.start or streamed) - started
            if on_window is not None:
                on_window(dict(figures))
            await store.messages.flush_all()
            written = await physical.written()
            stats = store.messages.stats()
            stored, text_bytes = await _stored(store)
        figures.update(
            phase="done",
            bytes_written=stats.bytes_written,
            stored_bytes=stored,
            write_amplification=stats.bytes_written / stored if stored else None,
            physical_bytes=written,
            text_bytes=text_bytes,
            physical_amplification=written / text_bytes if written and text_bytes else None,
            transactions_total=stats.transactions,
            rows_total=stats.rows_written,
            terminal_writes=stats.terminal_writes,
            write_failures=stats.write_failures,
            teardown_s=time.monotonic() - streamed,
            peak_rss_mb=_peak_rss_mb(),
        )
        return figures
    finally:
        batch_written.disconnect(recorder)


def _latencies(probe: _Probe) -> dict[str, Any]:
    create_p50, create_p99 = percentiles(probe.creates, (50, 99))
    terminal_p50, terminal_p99 = percentiles(probe.terminals, (50, 99))
    return {
        "probes": len(probe.creates),
        "create_p50_ms": _ms(create_p50),
        "create_p99_ms": _ms(create_p99),
        "terminal_p50_ms": _ms(terminal_p50),
        "terminal_p99_ms": _ms(terminal_p99),
    }


def _window_figures(
    spec: CellSpec, stats: StreamStats, window: _Window, recorder: _Recorder
) -> dict[str, Any]:
    start = window.start if window.start is not None else 0.0
    end = window.end if window.end is not None else start
    seconds = max(end - start, 1e-9)
    transactions = window.end_counters[0] - window.start_counters[0]
    rows = window.end_counters[1] - window.start_counters[1]
    if spec.strategy is Strategy.PER_MESSAGE:
        # Each of its transactions writes one row, but the store adds a tick's rows to its
        # counter only when the whole tick is written, which can be after the window.
        rows = transactions
    deltas = len(stats.delta_latencies_ns)
    offered = spec.streams * spec.rate
    update_p50, update_p99 = percentiles(stats.delta_latencies_ns, (50, 99))
    staleness = recorder.staleness_within(start, end)
    stale_p50, stale_p99, stale_max = percentiles(staleness, (50, 99, 100))
    lag_p99, lag_max = percentiles(window.lag, (99, 100))
    return {
        "kind": "stream",
        "phase": "window",
        "status": "ok",
        "strategy": spec.strategy.value,
        "streams": spec.streams,
        "rate": spec.rate,
        "duration": spec.duration,
        "debounce": spec.debounce,
        "window_s": seconds,
        "deltas": deltas,
        "deltas_per_s": deltas / spec.duration,
        "offered_per_s": offered,
        "throughput_ratio": deltas / (offered * spec.duration),
        "update_p50_us": _us_from_ns(update_p50),
        "update_p99_us": _us_from_ns(update_p99),
        "transactions": transactions,
        "transactions_per_s": transactions / seconds,
        "rows": rows,
        "rows_per_s": rows / seconds,
        "staleness_samples": len(staleness),
        "staleness_p50_ms": _ms(stale_p50),
        "staleness_p99_ms": _ms(stale_p99),
        "staleness_max_ms": _ms(stale_max),
        "loop_lag_p99_ms": _ms(lag_p99),
        "loop_lag_max_ms": _ms(lag_max),
        "messages_created": stats.messages_created,
        "peak_rss_mb": _peak_rss_mb(),
    }


async def run_flush_cell(spec: CellSpec) -> dict[str, Any]:
    """``flush_all()`` with ``flush_messages`` pending messages, ``flush_repeats`` times."""
    _, per_message = store_options(spec.strategy, spec.debounce)
    async with open_store(spec.url, debounce=_FLUSH_DEBOUNCE) as store:
        if per_message:
            commit_per_message(store)
        store.messages._writer.appends = not writes_whole(spec.strategy)
        session = await store.sessions.create("flush_all benchmark")
        created = [
            await store.messages.create(session.id, role=Role.ASSISTANT, parts=[Text(_FLUSH_TEXT)])
            for _ in range(spec.flush_messages)
        ]
        flushes: list[float] = []
        updates: list[int] = []
        for repeat in range(spec.flush_repeats):
            for message in created:
                message.append_text(f" more {repeat}")
                before = time.perf_counter_ns()
                await store.messages.update(message)
                updates.append(time.perf_counter_ns() - before)
            pending = store.messages.stats().pending_messages
            if pending != len(created):
                raise RuntimeError(f"expected {len(created)} pending messages, found {pending}")
            gc.collect()
            before_flush = time.perf_counter()
            await store.messages.flush_all()
            flushes.append(time.perf_counter() - before_flush)
        transactions = store.messages.stats().transactions
    flush_p50, flush_min, flush_max = percentiles(flushes, (50, 0, 100))
    update_p50, update_p99 = percentiles(updates, (50, 99))
    return {
        "kind": "flush",
        "phase": "done",
        "status": "ok",
        "strategy": spec.strategy.value,
        "messages": spec.flush_messages,
        "repeats": spec.flush_repeats,
        "flush_all_ms": _ms(flush_p50),
        "flush_all_min_ms": _ms(flush_min),
        "flush_all_max_ms": _ms(flush_max),
        "flush_all_samples_ms": [s * 1e3 for s in flushes],
        "transactions_per_flush": transactions / max(spec.flush_repeats, 1),
        "idle_update_p50_us": _us_from_ns(update_p50),
        "idle_update_p99_us": _us_from_ns(update_p99),
        "peak_rss_mb": _peak_rss_mb(),
    }


async def run_cell(
    spec: CellSpec,
    on_window: Callable[[dict[str, Any]], None] | None = None,
    on_open: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one cell in this process (the tests call this directly, without a child)."""
    if spec.kind == "stream":
        return await run_stream_cell(spec, on_window, on_open)
    if spec.kind == "flush":
        return await run_flush_cell(spec)
    raise ValueError(f"unknown cell kind {spec.kind!r}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(data))
    os.replace(scratch, path)


def _say_window_open() -> None:
    """Tell the parent on stdout that the window opened (``bench.profile_cell`` attaches then)."""
    print(WINDOW_OPEN, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.cell SPEC_JSON RESULT_PATH", file=sys.stderr)
        return 2
    spec = CellSpec.from_json(args[0])
    path = Path(args[1])
    figures = asyncio.run(
        run_cell(spec, lambda partial: _write_json(path, partial), _say_window_open)
    )
    _write_json(path, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
