"""The write-path benchmark's CPU budget: a tiny stream cell reports it, and it adds up.

A cell of a few streams for well under a second, on each backend, in the test process
(``run_cell``). No speed is asserted: only that every part was measured (positive where the
work certainly happened) and that the parts do not add up to more than the process spent.
"""

from __future__ import annotations

import pytest

from bench import cpu
from bench.cell import run_cell
from bench.report import build_report, render_table
from bench.spec import CellSpec, Strategy

STREAMS = 10
DURATION = 0.6


@pytest.mark.parametrize("strategy", [Strategy.GROUP, Strategy.WRITE_THROUGH])
async def test_a_stream_cell_reports_its_cpu_budget_per_delta(
    db_url: str, strategy: Strategy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every update() timed: no scaling of a small sample (a collection of the garbage inside
    # one timed call would count eight times), so the parts must fit in the total.
    monkeypatch.setattr(cpu, "UPDATE_SAMPLE_EVERY", 1)
    spec = CellSpec("stream", strategy, db_url, streams=STREAMS, duration=DURATION)
    figures = await run_cell(spec)
    assert figures["deltas"] > 0
    # Every call in the window was timed; the cell's deltas include the driver's first pass,
    # made before the window opens (one delta per stream).
    assert figures["cpu_update_sampled"] >= figures["deltas"] - STREAMS
    total = figures["cpu_us_per_delta"]
    update = figures["cpu_update_us_per_delta"]
    tick = figures["cpu_tick_us_per_delta"]
    feed = figures["cpu_feed_us_per_delta"]
    assert figures["cpu_update_sampled"] > 0
    assert total > 0 and update > 0 and tick > 0 and feed >= 0
    # The tick is its part on the loop plus the database's threads (SQLite's writer).
    loop, threads = figures["cpu_tick_loop_us_per_delta"], figures["cpu_tick_threads_us_per_delta"]
    assert tick == pytest.approx(loop + threads)
    if db_url.startswith("sqlite"):
        assert threads > 0 and figures["cpu_server_us_per_delta"] is None
        assert figures["cpu_threads_s"]["ms-sqlite-w"] > 0
    else:
        assert loop > 0
        server = figures["cpu_server_us_per_delta"]
        assert server is None or server >= 0
    # The parts are shares of the process's CPU, measured on the same clocks: never more
    # than all of it (a hundredth of slack for the clock reads' rounding).
    assert update + tick + feed <= total * 1.01
    assert figures["cpu_other_us_per_delta"] >= -total * 0.01
    # The loop thread can run one core at most; the database threads add at most another.
    assert 0 < figures["cpu_cores"] <= 2 + len(figures["cpu_threads_s"])


async def test_update_is_timed_one_call_in_eight_by_default(sqlite_url: str) -> None:
    assert cpu.UPDATE_SAMPLE_EVERY == 8
    spec = CellSpec("stream", Strategy.GROUP, sqlite_url, streams=STREAMS, duration=DURATION)
    figures = await run_cell(spec)
    calls = figures["deltas"] + figures["probes"]  # one finishing update per probe
    assert 0 < figures["cpu_update_sampled"] <= calls // 8 + 1
    assert figures["cpu_update_us_per_delta"] > 0


def test_the_table_shows_the_cpu_budget_when_measured() -> None:
    config = {"rate": 50.0, "duration": 5.0, "debounce": 0.033, "backend": "sqlite"}
    cell = {
        "kind": "stream",
        "strategy": "group",
        "streams": 100,
        "status": "ok",
        "error": "",
        "throughput_ratio": 1.0,
        "staleness_p99_ms": 40.0,
        "cpu_us_per_delta": 30.0,
        "cpu_cores": 0.15,
        "cpu_update_us_per_delta": 6.0,
        "cpu_tick_us_per_delta": 10.0,
        "cpu_tick_loop_us_per_delta": 2.0,
        "cpu_tick_threads_us_per_delta": 8.0,
        "cpu_feed_us_per_delta": 0.05,
        "cpu_other_us_per_delta": 13.95,
        "cpu_server_us_per_delta": None,
    }
    table = render_table(build_report(config, {}, [cell], {}))
    assert "CPU per accepted delta" in table
    assert "| group    | 100 |         30.0 |" in table
    assert "10.0 (2.0 + 8.0)" in table
    without = dict(cell)
    del without["cpu_us_per_delta"]
    assert "CPU per accepted delta" not in render_table(build_report(config, {}, [without], {}))


def test_the_profile_summary_counts_threads_parts_and_own_samples() -> None:
    from bench.profile_cell import summarize

    raw = [
        "thread (0x1): MainThread;main (/x/bench/cell.py:9);"
        "_drive (/x/messagestore/_demo/_workload.py:3);"
        "MessageService.update (/x/messagestore/_messages.py:200) 3",
        "thread (12): MainThread;main (/x/bench/cell.py:9);"
        "Database.submit_write (/x/messagestore/_database/_database.py:4) 1",
        "thread (0x2): ms-sqlite-w;run (/x/messagestore/_database/_database.py:5);"
        "write_messages (/x/messagestore/_database/_group_commit.py:7);"
        "execute (/v/site-packages/sqlalchemy/engine/base.py:1) 4",
    ]
    summary = summarize(raw, top=3)
    assert summary.startswith("8 samples")
    assert "| thread: MainThread | 50.0 % |" in summary  # thread ids are dropped
    assert "| MessageService.update | 37.5 % |" in summary
    assert "| group commit job (encode + statements) | 50.0 % |" in summary
    assert "| SQLAlchemy | 50.0 % |" in summary
    assert "| `execute (sqlalchemy/engine/base.py)` | 50.0 % |" in summary
    # ``submit_write`` is not ``_write``: a function is matched by its name, not a substring
    assert "| PostgreSQL write body (_write task) | 0.0 % |" in summary
