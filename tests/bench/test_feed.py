"""``python -m bench.feed`` runs end to end at a tiny size and reports figures that add up (the
benchmark itself, with real sizes, is run by hand: see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import ROOT


def test_feed_benchmark_runs_and_reports() -> None:
    args = ["--streams", "2", "--duration", "0.5", "--changes", "300", "--repeats", "1"]
    args += ["--blocks", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.feed", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [cell["streams"] for cell in report["latency"]] == [2]
    for cell in report["latency"]:
        assert 0 < cell["delivered"] <= cell["committed"]
        assert 0 <= cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]
        assert cell["final_delivered"] == cell["messages"] > 0
    assert [cell["size"] for cell in report["reader"]] == [1024, 65536]
    for cell in report["reader"]:
        assert cell["changes"] == cell["received"] > 0 and cell["cpu_us_per_change"] > 0
    assert report["replay_events_per_s"] > 0
    for measure in ("group_commit_ms", "idle_update_us"):
        assert set(report["overhead"][measure]) == {"none", "broker", "feed"}
        assert all(value > 0 for value in report["overhead"][measure].values())
