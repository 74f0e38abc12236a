"""``python -m bench.wire`` runs end to end at a tiny size and reports figures that add up (the
benchmark itself, with real sizes, is run by hand: see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import ROOT


def test_wire_benchmark_runs_and_reports() -> None:
    args = ["--sizes", "1", "3", "--clients", "1", "2", "--cpu-size", "1", "--rate", "400"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.wire", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [row["size_kb"] for row in report["bytes"]] == [1, 3]
    for row in report["bytes"]:
        assert row["text"] == row["size_kb"] * 1024
        deltas, whole = row["deltas"], row["whole"]
        assert 0 < deltas["frames"] <= row["updates"] + 1  # created, then at most one per update
        assert set(deltas["kinds"]) <= {"created", "delta", "updated"}
        assert set(whole["kinds"]) == {"created", "updated"}
        assert deltas["bytes"] < whole["bytes"]
        assert deltas["bytes_per_text_byte"] == deltas["bytes"] / row["text"]
    small, large = report["bytes"]
    assert large["whole"]["bytes_per_text_byte"] > small["whole"]["bytes_per_text_byte"]
    cpu = report["cpu"]
    assert cpu["baseline_s"] > 0
    assert [cell["clients"] for cell in cpu["cells"]] == [1, 2]
    for cell in cpu["cells"]:
        for mode in ("deltas", "whole"):
            side = cell[mode]
            assert 0 < side["frames_per_client"] <= side["updates"] + 1
            assert side["us_per_frame_per_client"] >= 0
