"""The write-path benchmark's statistics: percentiles, medians over repeats, the sustain rule."""

from __future__ import annotations

import pytest

from bench.stats import median_of, percentile, percentiles, sustain_verdict
from bench.write_path import aggregate_runs


def test_percentile_interpolates_between_ranks() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_percentile_does_not_need_sorted_input_or_change_it() -> None:
    values = [5.0, 1.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert values == [5.0, 1.0, 3.0]


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], q)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentiles([1.0], [q])


def test_percentiles_agree_with_percentile() -> None:
    values = [3.0, 9.0, 1.0, 4.0, 4.0, 8.0]
    assert percentiles(values, [0, 50, 99, 100]) == [
        percentile(values, 0),
        percentile(values, 50),
        percentile(values, 99),
        percentile(values, 100),
    ]
    assert percentiles([], [50, 99]) == [None, None]


def test_median_of_ignores_missing_values() -> None:
    assert median_of([3.0, None, 1.0, 2.0]) == 2.0
    assert median_of([None, None]) is None
    assert median_of([]) is None


GOOD = {"status": "ok", "throughput_ratio": 0.995, "staleness_p99_ms": 50.0}


def test_sustained_when_throughput_and_staleness_are_within_bounds() -> None:
    verdict = sustain_verdict(GOOD, staleness_bound_ms=66.0)
    assert verdict.sustained
    assert verdict.reason == ""


def test_not_sustained_when_deltas_fall_behind() -> None:
    verdict = sustain_verdict({**GOOD, "throughput_ratio": 0.9}, staleness_bound_ms=66.0)
    assert not verdict.sustained
    assert "accepted 90.0%" in verdict.reason


def test_throughput_threshold_is_configurable() -> None:
    cell = {**GOOD, "throughput_ratio": 0.9}
    assert sustain_verdict(cell, staleness_bound_ms=66.0, min_throughput=0.85).sustained


def test_not_sustained_when_staleness_exceeds_bound() -> None:
    verdict = sustain_verdict({**GOOD, "staleness_p99_ms": 70.0}, staleness_bound_ms=66.0)
    assert not verdict.sustained
    assert "staleness p99 70.0 ms > 66.0 ms" in verdict.reason


def test_staleness_exactly_at_bound_is_sustained() -> None:
    assert sustain_verdict({**GOOD, "staleness_p99_ms": 66.0}, staleness_bound_ms=66.0).sustained


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ({**GOOD, "status": "timeout", "error": "cut off after 60 s"}, "timeout: cut off"),
        ({**GOOD, "status": "error", "error": "exit 1: boom"}, "error: exit 1: boom"),
        ({**GOOD, "throughput_ratio": None}, "no deltas"),
        ({**GOOD, "staleness_p99_ms": None}, "no write"),
    ],
)
def test_not_sustained_without_complete_figures(cell: dict[str, object], reason: str) -> None:
    verdict = sustain_verdict(cell, staleness_bound_ms=66.0)
    assert not verdict.sustained
    assert reason in verdict.reason


def test_aggregate_runs_takes_medians_and_the_worst_status() -> None:
    runs = [
        {"kind": "stream", "strategy": "group", "streams": 10, "status": "ok", "x": 1.0, "y": 5},
        {"kind": "stream", "strategy": "group", "streams": 10, "status": "ok", "x": 3.0, "y": None},
        {
            "kind": "stream",
            "strategy": "group",
            "streams": 10,
            "status": "timeout",
            "error": "cut off",
            "x": 2.0,
            "y": 7,
        },
    ]
    cell = aggregate_runs(runs)
    assert cell["x"] == 2.0
    assert cell["y"] == 6.0
    assert cell["status"] == "timeout"
    assert cell["error"] == "cut off"
    assert cell["repeats"] == 3
    assert (cell["strategy"], cell["streams"]) == ("group", 10)


def test_aggregate_runs_needs_a_run() -> None:
    with pytest.raises(ValueError, match="no runs"):
        aggregate_runs([])
