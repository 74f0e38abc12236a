"""``python -m bench.scaleout`` runs one tiny cell end to end and reports the figures it promises;
its arithmetic (window, latency, delivered share, the bend rule, the model) on made-up samples.
No test here asserts a speed: the figures come from the benchmark, run by hand (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.scaleout import Options, _at, _bent, _figures, build_model, parse_args
from tests.support.paths import ROOT

CELL_KEYS = (
    "deltas_per_s",
    "offered_per_s",
    "write_tx_per_s",
    "db_commits_per_s",
    "notify_per_s",
    "rows_per_s",
    "feed_p50_ms",
    "feed_p99_ms",
    "events_per_s",
    "delivered_share",
    "server_cpu",
    "writers_cpu",
    "bent",
)


@pytest.mark.postgres
def test_a_tiny_scale_out_cell_runs_and_reports(postgres_url: str) -> None:
    args = ["--writers", "1", "--streams", "2", "--clients", "2", "--client-procs", "1"]
    args += ["--duration", "1", "--notify-seconds", "0.25", "--url", postgres_url, "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.scaleout", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [cell] = report["cells"]
    assert cell["status"] == "ok", cell
    for key in CELL_KEYS:
        assert key in cell, key
    assert (cell["writers"], cell["streams"], cell["clients"]) == (1, 2, 2)
    assert cell["deltas_per_s"] > 0
    assert cell["write_tx_per_s"] > 0
    assert cell["notify_per_s"] > 0  # every writing transaction notifies
    assert cell["feed_samples"] > 0
    assert 0 <= cell["feed_p50_ms"] <= cell["feed_p99_ms"] <= cell["feed_max_ms"]
    assert 0 < cell["delivered_share"] <= 1
    assert cell["server_cpu"] > 0
    assert [b["streams"] for b in report["bends"]] == [2]
    [row] = report["notify_probe"]["rows"][:1]
    assert row["notify_commits_per_s"] > 0 and row["plain_commits_per_s"] > 0
    [model] = report["model"]["rows"]
    assert model["commits_per_s_at_model"] > 0
    assert model["writers_at_commit_ceiling"] > 0


def test_the_url_must_be_postgresql() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--url", "sqlite+aiosqlite:///x.db"])


def test_counters_are_interpolated_between_samples() -> None:
    samples = [(10.0, 0), (11.0, 100), (12.0, 300)]
    assert _at(samples, 9.0) == 0
    assert _at(samples, 10.5) == 50
    assert _at(samples, 11.5) == 200
    assert _at(samples, 13.0) == 300
    assert _at([], 1.0) == 0


def test_figures_count_only_the_window() -> None:
    written = [
        {
            # revisions 1 and 2 committed in the window, 3 after it
            "commits": [[1, 10.1], [2, 10.5], [3, 12.5]],
            "transactions": [[10.1, 1, 0.004], [10.5, 1, 0.006], [12.5, 1, 0.005]],
            "deltas": [[10.0, 0], [12.0, 40]],
        }
    ]
    received = [
        [[1, 10.11], [2, 10.52], [3, 12.6]],  # client 1: every state
        [[2, 10.53]],  # client 2: revision 1 merged into 2
    ]
    figures = _figures(Options(), written, received, [10.1, 10.5, 12.5], 10.0, 12.0)
    assert figures["deltas_per_s"] == pytest.approx(20)
    assert figures["write_tx_per_s"] == pytest.approx(1)
    assert figures["rows_per_s"] == pytest.approx(1)
    assert figures["notify_per_s"] == pytest.approx(1)
    assert figures["feed_samples"] == 3
    assert figures["feed_max_ms"] == pytest.approx(30)
    assert figures["events_per_s"] == pytest.approx(1.5)  # 3 receipts inside the window
    assert figures["delivered_share"] == pytest.approx(0.75)  # 3 of 2 rows x 2 clients


def test_a_cell_bends_on_latency_or_on_what_it_delivers() -> None:
    options = Options(debounce=0.033, min_delivered=0.9)
    assert _bent({"feed_p99_ms": 50, "delivered_share": 1.0}, options) == (False, "")
    bent, reason = _bent({"feed_p99_ms": 120, "delivered_share": 1.0}, options)
    assert bent and "p99" in reason
    bent, reason = _bent({"feed_p99_ms": 50, "delivered_share": 0.5}, options)
    assert bent and "delivered" in reason


def test_the_model_extrapolates_from_the_largest_n_that_did_not_bend() -> None:
    options = Options(writers=(1, 2, 4), streams=(10,), clients=(10,), model_writers=100)
    cells = [
        {"status": "ok", "writers": 1, "streams": 10, "clients": 10, "notify_per_s": 30.0,
         "server_cpu": 0.1, "write_tx_p50_ms": 4.0, "bent": False},
        {"status": "ok", "writers": 2, "streams": 10, "clients": 10, "notify_per_s": 64.0,
         "server_cpu": 0.32, "write_tx_p50_ms": 5.0, "bent": False},
        {"status": "ok", "writers": 4, "streams": 10, "clients": 10, "notify_per_s": 70.0,
         "server_cpu": 0.5, "write_tx_p50_ms": 30.0, "bent": True},  # the machine was full
    ]  # fmt: skip
    probe = {"rows": [{"notify_commits_per_s": 640.0, "notify_cost_us": 100.0}]}
    [row] = build_model(options, cells, probe)["rows"]
    assert row["from_writers"] == 2
    assert row["commits_per_s_per_writer"] == pytest.approx(32)
    assert row["commits_per_s_at_model"] == pytest.approx(3200)
    assert row["writers_at_bump_ceiling"] == pytest.approx(20)  # 640 / 32
    assert row["hold_ms"] == 4.0  # the group commit at the smallest N
    assert row["commit_ceiling_per_s"] == pytest.approx(250)
    assert row["writers_at_commit_ceiling"] == pytest.approx(250 / 32)
    assert row["notify_s_per_s_at_model"] == pytest.approx(0.32)  # 3,200 x 100 us a second
    assert row["writers_at_notify_saturation"] == pytest.approx(1e6 / 3200)
    assert row["writers_at_one_server_core"] == pytest.approx(2 / 0.32)
    assert row["server_cores_at_model"] == pytest.approx(16)
