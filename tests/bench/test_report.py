"""The write-path benchmark's report, command line and plot (no speed is asserted anywhere)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import build_report, render_table
from bench.spec import Strategy
from bench.write_path import PLOT_HINT, ROOT, _require_matplotlib, main, parse_args

CONFIG = {
    "rate": 50.0,
    "duration": 5.0,
    "debounce": 0.033,
    "repeats": 1,
    "min_throughput": 0.98,
    "backend": "sqlite",
}
MACHINE = {"cpu": "test cpu", "cores": 2, "python": "3.11", "date": "today"}


def _cell(strategy: str, streams: int, **figures: Any) -> dict[str, Any]:
    base = {
        "kind": "stream",
        "strategy": strategy,
        "streams": streams,
        "status": "ok",
        "error": "",
        "throughput_ratio": 1.0,
        "deltas_per_s": 50.0 * streams,
        "staleness_p99_ms": 40.0,
        "transactions_per_s": 30.0,
        "update_p50_us": 4.0,
        "create_p50_ms": 0.8,
        "terminal_p50_ms": 0.9,
        "physical_amplification": 3.0,
    }
    return {**base, **figures}


def _report() -> dict[str, Any]:
    cells = [
        _cell("group", 1000, staleness_p99_ms=60.0, update_p50_us=4.5),
        _cell("group", 10),
        _cell("group", 100),
        _cell("write-through", 1, transactions_per_s=50.0, update_p50_us=4000.0),
        _cell("write-through", 10, throughput_ratio=0.4),
        _cell("per-message", 10, transactions_per_s=300.0),
        _cell("per-message", 100, status="timeout", error="cut off after 60 s"),
    ]
    flushes = {
        "group": {"status": "ok", "flush_all_ms": 80.0, "messages": 1000},
        "per-message": {"status": "ok", "flush_all_ms": 3000.0, "messages": 1000},
    }
    return build_report(CONFIG, MACHINE, cells, flushes)


def test_report_orders_cells_and_judges_each() -> None:
    report = _report()
    order = [(c["strategy"], c["streams"]) for c in report["cells"]]
    assert order == [
        ("write-through", 1),
        ("write-through", 10),
        ("per-message", 10),
        ("per-message", 100),
        ("group", 10),
        ("group", 100),
        ("group", 1000),
    ]
    verdicts = {(c["strategy"], c["streams"]): c["sustained"] for c in report["cells"]}
    assert verdicts[("write-through", 1)]
    assert not verdicts[("write-through", 10)]
    assert not verdicts[("per-message", 100)]
    assert verdicts[("group", 1000)]
    assert report["staleness_bound_ms"] == pytest.approx(66.0)


def test_report_summary_per_strategy() -> None:
    summary = _report()["summary"]
    assert list(summary) == ["write-through", "per-message", "group"]
    assert summary["write-through"]["largest_sustained_streams"] == 1
    assert summary["write-through"]["flush_all_ms"] is None
    assert summary["per-message"]["largest_sustained_streams"] == 10
    assert summary["group"]["largest_sustained_streams"] == 1000
    assert summary["group"]["flush_all_ms"] == 80.0


def test_report_targets() -> None:
    targets = {t["name"]: t for t in _report()["targets"]}
    assert set(targets) == {
        "streams",
        "factor",
        "flat",
        "physical",
        "latency",
        "update",
        "flush_all",
    }
    assert targets["physical"]["met"] is None  # 5 s streams: judged on 30 s ones only
    assert targets["latency"]["met"] is True
    assert targets["streams"]["met"] is True
    assert targets["factor"]["met"] is True  # 1000 >= 20 x 1
    assert "1,000x" in targets["factor"]["figure"]
    assert targets["flat"]["met"] is True
    assert targets["update"]["met"] is True
    assert targets["flush_all"]["met"] is True
    slow = _report()
    next(c for c in slow["cells"] if c["strategy"] == "group")["terminal_p50_ms"] = 1.5
    assert {
        t["name"]: t
        for t in build_report(CONFIG, MACHINE, slow["cells"], slow["flush_all"])["targets"]
    }["latency"]["met"] is False
    for target in targets.values():
        assert set(target) == {"name", "goal", "met", "figure"}


def test_targets_missed_and_not_measured() -> None:
    cells = [
        _cell("group", 10, transactions_per_s=30.0, update_p50_us=8.0),
        _cell("group", 100, transactions_per_s=300.0, update_p50_us=6.0),
    ]
    report = build_report(CONFIG, MACHINE, cells, {})
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["streams"]["met"] is None
    assert targets["factor"]["met"] is None
    assert targets["flat"]["met"] is False
    assert targets["update"]["met"] is False
    assert targets["flush_all"]["met"] is None


def test_update_target_is_judged_on_back_to_back_updates() -> None:
    cells = [_cell("group", 1, update_p50_us=40.0), _cell("group", 100, update_p50_us=6.0)]
    flushes = {"group": {"status": "ok", "flush_all_ms": 50.0, "messages": 10}}
    flushes["group"]["idle_update_p50_us"] = 4.0
    targets = {t["name"]: t for t in build_report(CONFIG, MACHINE, cells, flushes)["targets"]}
    assert targets["update"]["met"] is True
    assert "back-to-back 4.0" in targets["update"]["figure"]
    assert "S=1: 40.0" in targets["update"]["figure"]
    assert targets["flush_all"]["met"] is None  # fewer than 1,000 pending: not the target


def test_factor_target_when_write_through_sustains_nothing() -> None:
    for group_streams, met in ((10, False), (100, True)):
        cells = [
            _cell("write-through", 1, throughput_ratio=0.5),
            _cell("group", group_streams),
        ]
        report = build_report(CONFIG, MACHINE, cells, {})
        factor = next(t for t in report["targets"] if t["name"] == "factor")
        assert factor["met"] is met
        assert "counted as 1" in factor["figure"]


def test_report_is_json_serialisable() -> None:
    report = _report()
    again = json.loads(json.dumps(report))
    assert again["version"] == 1
    assert set(again) >= {"config", "machine", "cells", "flush_all", "summary", "targets"}


def test_table_shows_every_cell_and_the_targets() -> None:
    table = render_table(_report())
    assert "| strategy" in table
    assert "stale p99 ms" in table
    assert table.count("| group ") >= 3
    assert "timeout" in table
    assert "largest S sustained" in table
    assert "[met   ]" in table
    assert "test cpu" in table


# -- command line ----------------------------------------------------------------------------


def test_defaults() -> None:
    options = parse_args([])
    assert options.streams == (1, 10, 100, 1000)
    assert options.strategies == (Strategy.WRITE_THROUGH, Strategy.PER_MESSAGE, Strategy.GROUP)
    assert (options.rate, options.duration, options.debounce) == (50.0, 5.0, 0.033)
    assert options.url is None
    assert not options.json
    assert options.plot is None


def test_options_are_parsed() -> None:
    options = parse_args(
        [
            "--streams",
            "100,1,10,10",
            "--strategies",
            "group,write-through",
            "--duration",
            "2",
            "--json",
            "--url",
            "postgresql+asyncpg://postgres@127.0.0.1/bench",
        ]
    )
    assert options.streams == (1, 10, 100)
    assert options.strategies == (Strategy.WRITE_THROUGH, Strategy.GROUP)
    assert options.duration == 2.0
    assert options.json
    assert options.url is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--streams", "0"], "at least 1"),
        (["--streams", "ten"], "comma-separated list of integers"),
        (["--strategies", "fastest"], "unknown strategy 'fastest'"),
        (["--duration", "-1"], "must be positive"),
        (["--rate", "x"], "expected a number"),
        (["--min-throughput", "1.5"], "must be in (0, 1]"),
        (["--url", "mysql://localhost/db"], "unsupported backend"),
        (["--url", "sqlite+aiosqlite://"], "must name a file"),
        (["--url", "::nonsense::"], "not a database URL"),
    ],
)
def test_bad_arguments_exit_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exited:
        _require_matplotlib()
    assert PLOT_HINT in str(exited.value.code)


def test_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.plot import write_plot

    path = tmp_path / "plot.png"
    write_plot(_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_json_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench --json`` with a tiny sweep prints a complete report."""
    cells = tmp_path / "cells"
    saved = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--streams",
            "1,2",
            "--duration",
            "0.4",
            "--strategies",
            "write-through,group",
            "--flush-messages",
            "10",
            "--flush-repeats",
            "1",
            "--url",
            f"sqlite+aiosqlite:///{cells / 'bench.db'}",
            "--json",
            "--save",
            str(saved),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(c["strategy"], c["streams"]) for c in report["cells"]] == [
        ("write-through", 1),
        ("write-through", 2),
        ("group", 1),
        ("group", 2),
    ]
    assert all(c["status"] == "ok" for c in report["cells"]), report["cells"]
    assert all(isinstance(c["sustained"], bool) for c in report["cells"])
    assert set(report["flush_all"]) == {"group"}
    assert report["flush_all"]["group"]["messages"] == 10
    assert report["config"]["backend"] == "sqlite"
    assert "[4/5]" in done.stderr  # progress goes to stderr, JSON alone to stdout
    assert list(cells.iterdir()) == []  # cell files are removed
    assert json.loads(saved.read_text()) == report

    assert main(["--from", str(saved)]) == 0
    table = capsys.readouterr().out
    assert "| write-through | 2 |" in table
    assert "targets (default strategy: group)" in table


def test_from_needs_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--from", str(tmp_path / "missing.json")])
    assert "no such file" in capsys.readouterr().err
