"""The simulated agent ``serve --demo`` runs: the demo face's (``messagestore._demo``)."""

from __future__ import annotations

from .._demo import DEFAULT_RATE, simulated_agent

__all__ = ["DEFAULT_RATE", "simulated_agent"]
