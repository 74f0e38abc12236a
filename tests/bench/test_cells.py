"""The write-path benchmark's cells: each strategy really writes the way it claims (tiny runs).

These run a cell in the test process (``run_cell``) on a fresh SQLite file, with 3 streams for
well under a second. They check transaction patterns and the shape of the figures; no test here
asserts a speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.cell import run_cell
from bench.spec import CellSpec, Strategy, store_options
from bench.write_path import run_child

STREAMS = 3
DURATION = 0.6


def _url(tmp_path: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}.db"


async def _stream(tmp_path: Path, strategy: Strategy) -> dict[str, Any]:
    spec = CellSpec(
        "stream", strategy, _url(tmp_path, strategy.value), streams=STREAMS, duration=DURATION
    )
    windows: list[dict[str, Any]] = []
    figures = await run_cell(spec, windows.append)
    assert len(windows) == 1
    assert windows[0]["phase"] == "window"
    assert figures["phase"] == "done"
    return figures


def test_store_options_per_strategy() -> None:
    assert store_options(Strategy.WRITE_THROUGH, 0.033) == (0.0, False)
    assert store_options(Strategy.PER_MESSAGE, 0.033) == (0.033, True)
    assert store_options(Strategy.GROUP, 0.033) == (0.033, False)


def test_cell_spec_round_trips_through_json() -> None:
    spec = CellSpec("stream", Strategy.PER_MESSAGE, "sqlite+aiosqlite:///x.db", streams=7)
    assert CellSpec.from_json(spec.to_json()) == spec


async def test_write_through_writes_one_transaction_per_delta(tmp_path: Path) -> None:
    figures = await _stream(tmp_path, Strategy.WRITE_THROUGH)
    assert figures["deltas"] > 0
    # every delta (and every finish) is its own one-row transaction
    assert figures["transactions_total"] == figures["rows_total"]
    assert figures["transactions_total"] == figures["deltas"] + figures["terminal_writes"]
    assert figures["staleness_samples"] > 0


async def test_per_message_writes_one_transaction_per_row(tmp_path: Path) -> None:
    figures = await _stream(tmp_path, Strategy.PER_MESSAGE)
    assert figures["transactions_total"] == figures["rows_total"]
    # debounced: several deltas per row written
    assert figures["rows_total"] < figures["deltas"]


async def test_group_commit_writes_several_rows_per_transaction(tmp_path: Path) -> None:
    group = await _stream(tmp_path, Strategy.GROUP)
    per_message = await _stream(tmp_path, Strategy.PER_MESSAGE)
    assert group["rows_total"] > group["transactions_total"]
    assert per_message["transactions_total"] > group["transactions_total"]


async def test_stream_figures_are_complete(tmp_path: Path) -> None:
    figures = await _stream(tmp_path, Strategy.GROUP)
    for key in (
        "deltas_per_s",
        "throughput_ratio",
        "update_p50_us",
        "update_p99_us",
        "transactions_per_s",
        "rows_per_s",
        "staleness_p50_ms",
        "staleness_p99_ms",
        "loop_lag_p99_ms",
        "peak_rss_mb",
        "bytes_written",
        "stored_bytes",
        "write_amplification",
    ):
        assert isinstance(figures[key], float | int), key
    assert figures["offered_per_s"] == STREAMS * 50.0
    assert 0 < figures["throughput_ratio"] <= 1.05
    assert figures["write_amplification"] >= 1
    assert figures["messages_created"] == 2 * STREAMS  # warm-up: one prompt, one reply each


@pytest.mark.parametrize(
    ("strategy", "per_flush"), [(Strategy.GROUP, 1), (Strategy.PER_MESSAGE, 20)]
)
async def test_flush_cell_flushes_every_pending_message(
    tmp_path: Path, strategy: Strategy, per_flush: int
) -> None:
    spec = CellSpec("flush", strategy, _url(tmp_path, "flush"), flush_messages=20, flush_repeats=2)
    figures = await run_cell(spec)
    assert figures["messages"] == 20
    assert len(figures["flush_all_samples_ms"]) == 2
    assert figures["flush_all_ms"] > 0
    assert figures["transactions_per_flush"] == per_flush
    assert figures["idle_update_p50_us"] > 0


async def test_unknown_cell_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown cell kind"):
        await run_cell(CellSpec("nonsense", Strategy.GROUP, _url(tmp_path, "x")))


def test_a_cell_over_its_time_limit_is_cut_off_and_reported(tmp_path: Path) -> None:
    spec = CellSpec("stream", Strategy.GROUP, _url(tmp_path, "slow"), streams=1, duration=30)
    figures = run_child(spec, timeout=0.5)
    assert figures["status"] == "timeout"
    assert "cut off" in figures["error"]
    assert (figures["strategy"], figures["streams"]) == ("group", 1)


def test_a_failing_cell_is_reported_as_an_error(tmp_path: Path) -> None:
    spec = CellSpec("stream", Strategy.GROUP, "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    figures = run_child(spec, timeout=60)
    assert figures["status"] == "error"
    assert figures["error"].startswith("exit 1")


async def test_the_reads_benchmark_measures_cold_and_warm_reads(db_url: str) -> None:
    """``python -m bench.reads`` in miniature: every figure present, the session gone after."""
    from bench.reads import measure
    from messagestore import open_store

    figures = await measure(db_url, streams=3, ticks=4, reads=2)
    assert len(figures) == 4 and all(len(samples) == 2 for samples in figures.values())
    async with open_store(db_url) as store:
        assert [s.title for s in await store.sessions.list()] == []
