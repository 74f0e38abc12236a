"""What one benchmark cell runs: the strategy, the load, the database; JSON in and out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["CellSpec", "Strategy", "store_options", "writes_whole"]


class Strategy(StrEnum):
    """The write strategies compared by the benchmark (in the order reports list them)."""

    WRITE_THROUGH = "write-through"  # one synchronous write per delta (debounce=0)
    PER_MESSAGE = "per-message"  # debounced, each message its own transaction (the Go design)
    GROUP_WHOLE = "group-whole"  # group commit, every message rewritten whole (no appends)
    GROUP = "group"  # debounced group commit: one transaction per tick (the default)


def store_options(strategy: Strategy, debounce: float) -> tuple[float, bool]:
    """(debounce, commit each message alone) for ``strategy`` (see ``bench.per_message``)."""
    if strategy is Strategy.WRITE_THROUGH:
        return 0.0, False
    if strategy is Strategy.PER_MESSAGE:
        return debounce, True
    return debounce, False


def writes_whole(strategy: Strategy) -> bool:
    """True for the strategies that rewrite every message whole (no appends)."""
    return strategy in (Strategy.PER_MESSAGE, Strategy.GROUP_WHOLE)


@dataclass(frozen=True, slots=True)
class CellSpec:
    """One child-process run.

    ``kind`` is ``"stream"`` (S streams at R deltas/s for T seconds) or ``"flush"``
    (``flush_all()`` of ``flush_messages`` pending messages, ``flush_repeats`` times).
    """

    kind: str
    strategy: Strategy
    url: str
    streams: int = 1
    rate: float = 50.0
    duration: float = 5.0
    debounce: float = 0.033
    seed: int = 1
    lag_interval: float = 0.010
    flush_messages: int = 1000
    flush_repeats: int = 5

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        data: dict[str, Any] = json.loads(text)
        data["strategy"] = Strategy(data["strategy"])
        return cls(**data)
