"""``python -m bench.peers``: one tiny cell of each peer runs and reports the figures it promises,
the SIGKILL test counts what survived, and the whole command runs end to end. The Agents SDK
and Redis parts skip (with the reason) when their package or server is missing; no test here
asserts a speed (the figures come from the benchmark, run by hand: BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peers
from bench.peers import INSTALL, kill_test, missing_package, redis_problem
from bench.peers_child import PeerSpec, run_cell
from tests.support.paths import ROOT

REDIS_URL = peers.DEFAULT_REDIS

CELL_KEYS = (
    "offered_per_s",
    "accepted_per_s",
    "throughput_ratio",
    "staleness_p50_ms",
    "staleness_p99_ms",
    "issue_lag_p99_ms",
    "bytes_written",
    "text_bytes",
    "bytes_per_text_byte",
    "readable",
    "verified",
)


def _require(peer: str) -> None:
    reason = missing_package(peer)
    if reason is not None:
        pytest.skip(reason)
    if peer == "redis-stream":
        problem = redis_problem(REDIS_URL)
        if problem is not None:
            pytest.skip(problem)


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'peer.db'}"


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return _sqlite(tmp_path)
    if backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return REDIS_URL


@pytest.mark.parametrize(
    "name",
    [
        "messagestore/sqlite",
        pytest.param("messagestore/postgresql", marks=pytest.mark.postgres),
        "agents-sdk/sqlite",
        pytest.param("agents-sdk/postgresql", marks=pytest.mark.postgres),
        "redis-stream",
    ],
)
def test_one_tiny_cell_of_each_peer(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _require(name)
    kind, backend = peers.PEERS[name]
    url = _url(backend, tmp_path, request)
    spec = PeerSpec(kind, url, streams=2, rate=20, duration=0.5, prefix=f"t{tmp_path.name}")
    figures = asyncio.run(run_cell(spec))  # sync: the PostgreSQL fixture runs its own loop
    for key in CELL_KEYS:
        assert key in figures, key
    assert figures["accepted"] > 0
    assert figures["offered_per_s"] == 40
    assert figures["staleness_samples"] == figures["acknowledged"] == figures["accepted"]
    assert 0 <= figures["staleness_p50_ms"] <= figures["staleness_p99_ms"]
    assert figures["verified"], "a reader finds exactly the acknowledged deltas"
    assert figures["durable"] is (kind != "redis-stream")
    if backend == "postgresql":
        assert figures["database_growth_bytes"] is not None
    if kind == "redis-stream":
        assert figures["stream_memory_bytes"] > 0
        assert figures["bytes_kind"] == "memory"


@pytest.mark.parametrize("name", ["messagestore/sqlite", "agents-sdk/sqlite", "redis-stream"])
def test_sigkill_of_the_writer_is_counted(name: str, tmp_path: Path) -> None:
    _require(name)
    kind, backend = peers.PEERS[name]
    url = REDIS_URL if backend == "redis" else _sqlite(tmp_path)
    spec = PeerSpec(kind, url, streams=2, rate=20, duration=0, prefix=f"k{tmp_path.name}")
    kill = kill_test(spec, kill_after=0.6, timeout=120)
    assert kill["status"] == "ok", kill
    assert kill["acknowledged"] > 0
    assert (
        kill["readable"]
        == kill["acknowledged"] - kill["lost"] + kill["readable_beyond_acknowledged"]
    )
    if kind != "messagestore":  # a call returns only once its write committed
        assert kill["lost"] == 0


def test_a_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    reason = missing_package("redis-stream")
    assert reason is not None and INSTALL in reason and "redis" in reason
    assert missing_package("messagestore/sqlite") is None


def test_the_command_runs_end_to_end() -> None:
    args = ["--peers", "messagestore/sqlite,redis-stream", "--streams", "2", "--duration", "0.5"]
    args += ["--kill-after", "0.5", "--kill-streams", "2", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.peers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    ran = {cell["name"] for cell in report["cells"]}
    assert "messagestore/sqlite" in ran
    assert ran | set(report["skipped"]) == {"messagestore/sqlite", "redis-stream"}
    for cell in report["cells"]:
        assert cell["status"] == "ok", cell
        assert isinstance(cell["sustained"], bool)
    assert set(report["kill"]) == ran
    summary = {row["name"]: row for row in report["summary"]}
    assert summary["messagestore/sqlite"]["kill_acknowledged"] > 0
    for reason in report["skipped"].values():
        assert reason  # a skipped peer says why
