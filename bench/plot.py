"""A PNG of the write-path report, per strategy against S: transactions/s, staleness p99, and
the share of the offered deltas accepted.

Needs matplotlib (the ``plot`` extra: ``pip install -e ".[plot]"``); imported only when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["write_plot"]

_STYLE = {
    "write-through": ("tab:red", "s"),
    "per-message": ("tab:orange", "^"),
    "group": ("tab:blue", "o"),
}


def write_plot(report: Mapping[str, Any], path: Path) -> None:
    """Write the plot to ``path`` (PNG). Unsustained cells are drawn with hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = report["config"]
    figure, (left, right, share) = plt.subplots(1, 3, figsize=(14, 4), dpi=100)
    for strategy in report["summary"]:
        cells = sorted(
            (c for c in report["cells"] if c["strategy"] == strategy), key=lambda c: c["streams"]
        )
        color, marker = _STYLE.get(strategy, ("tab:gray", "x"))
        for axis, key, scale in (
            (left, "transactions_per_s", 1.0),
            (right, "staleness_p99_ms", 1.0),
            (share, "throughput_ratio", 100.0),
        ):
            points = [
                (c["streams"], None if c.get(key) is None else c[key] * scale, c.get("sustained"))
                for c in cells
            ]
            points = [p for p in points if p[1] is not None]
            if not points:
                continue
            axis.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=color,
                label=strategy,
                linewidth=1.5,
            )
            for streams, value, sustained in points:
                axis.plot(
                    [streams],
                    [value],
                    marker=marker,
                    color=color,
                    markerfacecolor=color if sustained else "white",
                    markersize=7,
                )
    bound = float(report["staleness_bound_ms"])
    right.axhline(bound, color="gray", linestyle="--", linewidth=1)
    right.text(1, bound * 1.1, f"2 x debounce = {bound:g} ms", color="gray", fontsize=8)
    minimum = float(config.get("min_throughput", 0.98)) * 100
    share.axhline(minimum, color="gray", linestyle="--", linewidth=1)
    left.set_title("transactions per second")
    right.set_title("staleness p99 (accepted -> durable), ms")
    share.set_title("deltas accepted, % of offered")
    for axis in (left, right, share):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent streams S")
        axis.grid(True, which="both", alpha=0.3)
    left.set_yscale("log")
    right.set_yscale("log")
    share.set_ylim(0, 105)
    left.legend(fontsize=8)
    figure.suptitle(
        f"messagestore write path ({config.get('backend', 'sqlite')}): "
        f"R={float(config['rate']):g} deltas/s per stream, T={float(config['duration']):g} s; "
        "hollow = not sustained",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
