"""Statistics for the write-path benchmark: percentiles, medians over repeats, the sustain rule.

Percentiles interpolate linearly between the two nearest ranks (numpy's default), so p50 of an
even-sized sample is the mean of its two middle values; an empty sample has no percentile
(``None``), which the report prints as a dash.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MIN_THROUGHPUT",
    "Verdict",
    "median_of",
    "percentile",
    "percentiles",
    "sustain_verdict",
]

# A cell keeps up when it accepts at least this share of the offered deltas in the window (the
# pacing itself loses up to one delta per stream at either edge of the window).
DEFAULT_MIN_THROUGHPUT = 0.98


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` (need not be sorted); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {q}")
    if not values:
        return None
    ordered = sorted(values)
    return _interpolate(ordered, q)


def percentiles(values: Sequence[float], qs: Iterable[float]) -> list[float | None]:
    """Several percentiles of one sample, sorting it once."""
    ordered = sorted(values)
    result: list[float | None] = []
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be between 0 and 100, not {q}")
        result.append(_interpolate(ordered, q) if ordered else None)
    return result


def _interpolate(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def median_of(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a cell sustained its load, and why not."""

    sustained: bool
    reason: str


def sustain_verdict(
    cell: Mapping[str, Any],
    *,
    staleness_bound_ms: float,
    min_throughput: float = DEFAULT_MIN_THROUGHPUT,
) -> Verdict:
    """Decide whether one (strategy, streams) cell sustained its offered load.

    Sustained means: the cell ran to the end (no timeout, no error), accepted at least
    ``min_throughput`` of the offered deltas during the window, and the staleness p99
    (accepted → durable) stayed within ``staleness_bound_ms``.
    """
    status = cell.get("status", "ok")
    if status != "ok":
        return Verdict(False, f"{status}: {cell.get('error') or 'cut off'}")
    ratio = cell.get("throughput_ratio")
    if ratio is None:
        return Verdict(False, "no deltas measured")
    if ratio < min_throughput:
        return Verdict(False, f"accepted {ratio:.1%} of offered deltas (< {min_throughput:.0%})")
    stale = cell.get("staleness_p99_ms")
    if stale is None:
        return Verdict(False, "no write measured in the window")
    if stale > staleness_bound_ms:
        return Verdict(False, f"staleness p99 {stale:.1f} ms > {staleness_bound_ms:.1f} ms")
    return Verdict(True, "")
