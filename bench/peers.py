"""Peers side by side: ``python -m bench.peers`` (run from the repository root).

The same S streams x R deltas/s, one call per delta, kept by:

* ``messagestore/sqlite``, ``messagestore/postgresql``: ``store.messages.update()`` with the
  default debounce (group commit);
* ``agents-sdk/sqlite``, ``agents-sdk/postgresql``: the OpenAI Agents SDK's
  ``SQLAlchemySession`` (``agents.extensions.memory``), one ``add_items`` per delta, each delta
  appended as a new item — the only way to keep a partial reply with one call per delta (the
  session has no update: rewriting the reply item would take ``pop_item`` plus ``add_items``,
  two transactions per delta, and rewrite the whole reply each time);
* ``redis-stream``: one ``XADD`` per delta to a Redis stream per reply (Redis keeps nothing on
  disk here: its bytes are the stream's memory, not durable bytes).

Every (peer, S) cell runs in a fresh process (``bench.peers_child``) on a fresh database (an
SQLite file in a temporary folder, a scratch PostgreSQL database next to ``--url``; for Redis
the cell's keys, deleted after). Measured per cell (see ``bench.peers_child``):

* accepted vs offered: calls made in the window ÷ T, against S x R; a peer whose call waits
  for its write takes the next delta of a stream only when the call returned;
* staleness p99: from the call to durable (messagestore: the commit of the batch that took the
  delta; SDK: the call's return, after its commit; Redis: the call's return, visible to a
  reader);
* bytes written from the window's start until everything is durable: SQLite, every byte the
  cell's process passed to ``write()``; PostgreSQL, the server's WAL (``pg_current_wal_lsn()``
  difference, server-wide: run it on a quiet server); Redis, ``used_memory`` difference (and
  the streams' own ``MEMORY USAGE``) — memory, not disk;
* *sustained*: accepted ≥ ``--min-throughput`` of offered and staleness p99 ≤
  ``--staleness-bound-ms`` (default 2 x debounce, the write benchmark's rule).

Then, per peer, a SIGKILL test: ``--kill-streams`` streams at R for ``--kill-after`` seconds,
the writer process killed, and a fresh process counts what a reader finds per stream against
what the writer had acknowledged (a call that returned).

Output: a table, or ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from bench.peers_child import PeerSpec
from bench.stats import DEFAULT_MIN_THROUGHPUT, sustain_verdict
from bench.write_path import (
    ROOT,
    _Databases,
    _pg_admin,
    _positive,
    _positive_int_list,
    machine_info,
)

__all__ = ["PEERS", "Options", "main", "parse_args", "run"]

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
INSTALL = 'pip install -e ".[bench]"'
# name -> (peer kind, backend)
PEERS: dict[str, tuple[str, str]] = {
    "messagestore/sqlite": ("messagestore", "sqlite"),
    "messagestore/postgresql": ("messagestore", "postgresql"),
    "agents-sdk/sqlite": ("agents-sdk", "sqlite"),
    "agents-sdk/postgresql": ("agents-sdk", "postgresql"),
    "redis-stream": ("redis-stream", "redis"),
}
_PACKAGES = {"agents-sdk": ("agents", "openai-agents"), "redis-stream": ("redis", "redis")}


@dataclass(frozen=True, slots=True)
class Options:
    peers: tuple[str, ...] = tuple(PEERS)
    streams: tuple[int, ...] = (1, 10, 100)
    rate: float = 50.0
    duration: float = 5.0
    debounce: float = 0.033
    url: str = DEFAULT_URL
    redis_url: str = DEFAULT_REDIS
    min_throughput: float = DEFAULT_MIN_THROUGHPUT
    staleness_bound_ms: float | None = None
    kill_streams: int = 10
    kill_after: float = 2.0
    cell_timeout: float | None = None
    seed: int = 1
    json: bool = False

    @property
    def bound_ms(self) -> float:
        if self.staleness_bound_ms is not None:
            return self.staleness_bound_ms
        return 2 * self.debounce * 1e3

    def timeout(self, streams: int) -> float:
        if self.cell_timeout is not None:
            return self.cell_timeout
        return 60 + 3 * self.duration + 0.1 * streams


# -- what can run here -------------------------------------------------------------------------


def missing_package(peer: str) -> str | None:
    """Why ``peer`` cannot run for want of a package (with the install command), or None."""
    kind, _ = PEERS[peer]
    if kind not in _PACKAGES:
        return None
    module, package = _PACKAGES[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found and kind == "agents-sdk":
        try:
            found = (
                importlib.util.find_spec("agents.extensions.memory.sqlalchemy_session") is not None
            )
        except (ImportError, ValueError):
            found = False
    if found:
        return None
    return f"{peer} needs the {package} package, which is not installed: {INSTALL}"


def postgres_problem(url: str) -> str | None:
    try:
        asyncio.run(asyncio.wait_for(_pg_admin(url, "SELECT 1"), 10))
    except Exception as exc:
        return f"no PostgreSQL answers at {_redact(url)}: {exc!r}"
    return None


def redis_problem(url: str) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Redis server answers at {url}: {exc!r}"
    return None


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# -- one cell ----------------------------------------------------------------------------------


def _child(mode: str, spec: PeerSpec, path: Path) -> list[str]:
    return [sys.executable, "-m", "bench.peers_child", mode, spec.to_json(), str(path)]


def run_cell(spec: PeerSpec, timeout: float) -> dict[str, Any]:
    """One ``run`` child, cut off after ``timeout``; its figures plus ``status``/``error``."""
    with tempfile.TemporaryDirectory(prefix="msbench-peers-") as scratch:
        out = Path(scratch) / "result.json"
        status, error = "ok", ""
        try:
            done = subprocess.run(
                _child("run", spec, out),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            status, error = "timeout", f"cut off after {timeout:.0f} s"
        else:
            if done.returncode != 0:
                tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
                status, error = "error", f"exit {done.returncode}: {tail[0]}"
        figures: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    figures.update(status=status, error=error)
    return figures


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""


def kill_test(spec: PeerSpec, kill_after: float, timeout: float) -> dict[str, Any]:
    """Stream, SIGKILL the writer ``kill_after`` s into the window, count what survived."""
    with tempfile.TemporaryDirectory(prefix="msbench-peers-kill-") as scratch:
        counters = Path(scratch) / "acked.bin"
        counters.write_bytes(bytes(8 * spec.streams))
        writer = subprocess.Popen(
            _child("kill", spec, counters),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = _read_line(writer, timeout)
            if line != "streaming":
                writer.kill()
                _, stderr = writer.communicate(timeout=30)
                tail = (stderr or "").strip().splitlines()[-1:] or ["no output"]
                return {"status": "error", "error": f"the writer did not stream: {tail[0]}"}
            streaming = time.monotonic()
            time.sleep(kill_after)
            writer.send_signal(signal.SIGKILL)
            streamed = time.monotonic() - streaming
            writer.communicate(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.communicate(timeout=30)
        acked = list(array("q", counters.read_bytes()))
        out = Path(scratch) / "count.json"
        done = subprocess.run(
            _child("count", spec, out),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return {"status": "error", "error": f"counting failed: {tail[0]}"}
        readable = json.loads(out.read_text())["readable"]
    lost = [max(0, a - r) for a, r in zip(acked, readable, strict=True)]
    beyond = [max(0, r - a) for a, r in zip(acked, readable, strict=True)]
    total = sum(acked)
    # What the model produced until the kill: deltas a peer had not taken yet were waiting in
    # the writer's memory, and died with it too.
    offered = spec.streams * spec.rate * streamed
    return {
        "status": "ok",
        "error": "",
        "streams": spec.streams,
        "killed_after_s": kill_after,
        "acknowledged": total,
        "readable": sum(readable),
        "lost": sum(lost),
        "lost_max_per_stream": max(lost, default=0),
        "lost_ms_per_stream": 1e3 * sum(lost) / len(lost) / spec.rate if lost else None,
        "readable_beyond_acknowledged": sum(beyond),
        "survived_share": (total - sum(lost)) / total if total else None,
        "offered": offered,
        "readable_of_offered": sum(readable) / offered if offered else None,
    }


# -- the run -----------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[bench.peers] {message}", file=sys.stderr, flush=True)


def _spec(options: Options, peer: str, url: str, streams: int, prefix: str) -> PeerSpec:
    return PeerSpec(
        peer=PEERS[peer][0],
        url=url,
        streams=streams,
        rate=options.rate,
        duration=options.duration,
        debounce=options.debounce,
        prefix=prefix,
        seed=options.seed,
    )


@contextlib.contextmanager
def _target(
    databases: _Databases, sqlite: _Databases, options: Options, peer: str, label: str
) -> Iterator[str]:
    backend = PEERS[peer][1]
    if backend == "postgresql":
        with databases.fresh(label) as url:
            yield url
    elif backend == "sqlite":
        with sqlite.fresh(label) as url:
            yield url
    else:
        yield options.redis_url


def run(options: Options) -> dict[str, Any]:
    machine = machine_info()
    skipped: dict[str, str] = {}
    for peer in options.peers:
        reason = missing_package(peer)
        if reason is not None:
            skipped[peer] = reason
    if any(PEERS[p][1] == "postgresql" for p in options.peers if p not in skipped):
        problem = postgres_problem(options.url)
        if problem is not None:
            for peer in options.peers:
                if PEERS[peer][1] == "postgresql":
                    skipped.setdefault(peer, problem)
    if "redis-stream" in options.peers and "redis-stream" not in skipped:
        problem = redis_problem(options.redis_url)
        if problem is not None:
            skipped["redis-stream"] = problem
    for reason in skipped.values():
        _progress(f"skipping {reason}")
    databases = _Databases(options.url)
    sqlite = _Databases(None)
    cells: list[dict[str, Any]] = []
    kills: dict[str, dict[str, Any]] = {}
    run_id = f"msbench{os.getpid()}"
    try:
        for peer in options.peers:
            if peer in skipped:
                continue
            for streams in options.streams:
                label = f"{peer.replace('/', '-')}-{streams}"
                with _target(databases, sqlite, options, peer, label) as url:
                    spec = _spec(options, peer, url, streams, f"{run_id}-{label}")
                    cell = run_cell(spec, options.timeout(streams))
                cell.update(name=peer, peer=PEERS[peer][0], backend=PEERS[peer][1], streams=streams)
                verdict = sustain_verdict(
                    cell, staleness_bound_ms=options.bound_ms, min_throughput=options.min_throughput
                )
                cell.update(sustained=verdict.sustained, reason=verdict.reason)
                cells.append(cell)
                _progress(f"{peer} S={streams}: {_describe(cell)}")
            if options.kill_after > 0:
                label = f"{peer.replace('/', '-')}-kill"
                with _target(databases, sqlite, options, peer, label) as url:
                    spec = _spec(options, peer, url, options.kill_streams, f"{run_id}-{label}")
                    kill = kill_test(
                        spec, options.kill_after, options.timeout(options.kill_streams)
                    )
                kills[peer] = kill
                _progress(f"{peer} SIGKILL: {_describe_kill(kill)}")
    finally:
        databases.close()
        sqlite.close()
    machine["load_average_end"] = list(os.getloadavg())
    config = asdict(options)
    config["url"] = _redact(options.url)
    config["staleness_bound_ms"] = options.bound_ms
    return {
        "benchmark": "messagestore and its peers",
        "config": config,
        "machine": machine,
        "skipped": skipped,
        "cells": cells,
        "kill": kills,
        "summary": _summary(options, cells, kills),
    }


def _summary(
    options: Options, cells: list[dict[str, Any]], kills: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for peer in options.peers:
        own = [c for c in cells if c["name"] == peer]
        if not own:
            continue
        sustained = [c for c in own if c["sustained"]]
        best = max(sustained, key=lambda c: c["streams"]) if sustained else None
        largest = max(own, key=lambda c: c["streams"])
        kill = kills.get(peer, {})
        rows.append(
            {
                "name": peer,
                "largest_sustained_streams": best["streams"] if best else 0,
                "at_streams": (best or largest)["streams"],
                "accepted_per_s": (best or largest).get("accepted_per_s"),
                "staleness_p99_ms": (best or largest).get("staleness_p99_ms"),
                "bytes_written": (best or largest).get("bytes_written"),
                "bytes_per_text_byte": (best or largest).get("bytes_per_text_byte"),
                "bytes_kind": (best or largest).get("bytes_kind"),
                "durable": (best or largest).get("durable"),
                "kill_acknowledged": kill.get("acknowledged"),
                "kill_readable": kill.get("readable"),
                "kill_lost": kill.get("lost"),
                "kill_survived_share": kill.get("survived_share"),
                "kill_readable_of_offered": kill.get("readable_of_offered"),
            }
        )
    return rows


def _describe(cell: dict[str, Any]) -> str:
    if cell["status"] != "ok":
        return f"{cell['status']}: {cell['error']}"
    return (
        f"{cell['accepted_per_s']:,.0f}/{cell['offered_per_s']:,.0f} deltas/s, staleness p99 "
        f"{_num(cell['staleness_p99_ms'], 1)} ms, {_mb(cell['bytes_written'])} MB "
        f"{cell['bytes_kind']}"
        + ("" if cell["sustained"] else f" - not sustained: {cell['reason']}")
    )


def _describe_kill(kill: dict[str, Any]) -> str:
    if kill["status"] != "ok":
        return f"{kill['status']}: {kill['error']}"
    return (
        f"{kill['readable']:,} of {kill['acknowledged']:,} acknowledged deltas readable, "
        f"{kill['lost']:,} lost"
    )


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def _mb(value: Any) -> str:
    return "-" if value is None else f"{float(value) / 1e6:,.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("peer", lambda c: c["name"]),
    ("S", lambda c: f"{c['streams']:,}"),
    ("deltas/s", lambda c: _num(c.get("accepted_per_s"))),
    ("of offered", lambda c: _pct(c.get("throughput_ratio"))),
    ("stale p50 ms", lambda c: _num(c.get("staleness_p50_ms"), 1)),
    ("stale p99 ms", lambda c: _num(c.get("staleness_p99_ms"), 1)),
    ("issue lag p99 ms", lambda c: _num(c.get("issue_lag_p99_ms"), 1)),
    ("MB written", lambda c: _mb(c.get("bytes_written"))),
    ("bytes/text byte", lambda c: _num(c.get("bytes_per_text_byte"), 1)),
    (
        "what bytes",
        lambda c: (
            "used_memory, not on disk"
            if c.get("bytes_kind") == "memory"
            else ("WAL, server-wide" if c.get("backend") == "postgresql" else "write()")
        ),
    ),
    (
        "stored MB",
        lambda c: _mb(
            c.get("stream_memory_bytes")
            if c.get("bytes_kind") == "memory"
            else c.get("database_growth_bytes")
        ),
    ),
    ("readable = acked", lambda c: "yes" if c.get("verified") else "NO"),
    ("sustained", lambda c: "yes" if c.get("sustained") else f"no ({c.get('reason', '')})"),
]


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def render(report: dict[str, Any]) -> str:
    config, machine = report["config"], report["machine"]
    lines = [
        f"messagestore and its peers - R={config['rate']:g} deltas/s per stream, "
        f"T={config['duration']:g} s, debounce={config['debounce'] * 1e3:g} ms, 1 run per cell",
        f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"{machine['date']}, load average "
        + "/".join(f"{x:.1f}" for x in machine["load_average"])
        + " -> "
        + "/".join(f"{x:.1f}" for x in machine["load_average_end"])
        + f", sum(range(1000)) takes {machine['calibration_us']:.1f} us, "
        f"commit {machine['commit']}",
        f"sustained = accepted >= {config['min_throughput']:.0%} of offered deltas and "
        f"staleness p99 <= {config['staleness_bound_ms']:g} ms (call -> durable; Redis: "
        "call -> visible, nothing on disk)",
        "",
    ]
    ok = [c for c in report["cells"] if c["status"] == "ok"]
    lines += _markdown([h for h, _ in _COLUMNS], [[f(c) for _, f in _COLUMNS] for c in ok])
    for cell in report["cells"]:
        if cell["status"] != "ok":
            lines.append(
                f"! {cell['name']} S={cell['streams']}: {cell['status']} - {cell['error']}"
            )
    if report["kill"]:
        lines += [
            "",
            f"SIGKILL of the writer {config['kill_after']:g} s into "
            f"{config['kill_streams']} streams at R={config['rate']:g}:",
        ]
        kill_rows = []
        for name, kill in report["kill"].items():
            if kill["status"] != "ok":
                kill_rows.append([name, kill["status"], "-", "-", "-", "-", "-", kill["error"]])
                continue
            kill_rows.append(
                [
                    name,
                    f"{kill['offered']:,.0f}",
                    f"{kill['acknowledged']:,}",
                    f"{kill['readable']:,}",
                    f"{kill['lost']:,} ({_num(kill['lost_ms_per_stream'], 0)} ms of each stream)",
                    _pct(kill["survived_share"]),
                    _pct(kill["readable_of_offered"]),
                    f"{kill['readable_beyond_acknowledged']:,}",
                ]
            )
        headers = ["peer", "offered", "acknowledged", "readable after", "lost of acknowledged"]
        headers += ["acknowledged readable", "offered readable", "readable not acknowledged"]
        lines += _markdown(headers, kill_rows)
    lines += ["", "summary"]
    rows = [
        [
            s["name"],
            f"{s['largest_sustained_streams']:,}" if s["largest_sustained_streams"] else "none",
            f"{_num(s['staleness_p99_ms'], 1)} at S={s['at_streams']:,}",
            f"{_mb(s['bytes_written'])} ({_num(s['bytes_per_text_byte'], 1)}x text)"
            + ("" if s["durable"] else " memory"),
            f"{_pct(s['kill_survived_share'])} of acknowledged, "
            f"{_pct(s['kill_readable_of_offered'])} of offered",
        ]
        for s in report["summary"]
    ]
    lines += _markdown(
        ["peer", "largest S sustained", "stale p99 ms", "MB written", "survives SIGKILL"], rows
    )
    for peer, reason in report["skipped"].items():
        lines.append(f"skipped {peer}: {reason}")
    return "\n".join(lines)


# -- the command line --------------------------------------------------------------------------


def _peers(value: str) -> tuple[str, ...]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    chosen: list[str] = []
    for name in names:
        matches = [p for p in PEERS if p == name or p.split("/")[0] == name]
        if not matches:
            raise argparse.ArgumentTypeError(
                f"unknown peer {name!r}; choose from {', '.join(PEERS)} "
                "(or messagestore, agents-sdk)"
            )
        chosen += [m for m in matches if m not in chosen]
    if not chosen:
        raise argparse.ArgumentTypeError("expected at least one peer")
    return tuple(p for p in PEERS if p in chosen)


def _share(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="messagestore beside the Agents SDK's SQLAlchemySession and a Redis stream: "
        "the same streams, one call per delta (see the module docstring).",
    )
    parser.add_argument(
        "--peers",
        type=_peers,
        default=tuple(PEERS),
        metavar="NAME,...",
        help=f"any of {', '.join(PEERS)} (default: all)",
    )
    parser.add_argument(
        "--streams",
        type=_positive_int_list,
        default=(1, 10, 100),
        metavar="S,S,...",
        help="concurrent streams to sweep (default 1,10,100)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=50.0,
        help="deltas per second per stream (default 50)",
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=5.0,
        help="seconds of streaming per cell (default 5)",
    )
    parser.add_argument(
        "--debounce",
        type=_positive(float),
        default=0.033,
        help="messagestore's debounce in seconds (default 0.033)",
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="PostgreSQL URL; each cell gets a scratch database next to it "
        f"(needs CREATEDB; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS, help=f"the Redis server (default {DEFAULT_REDIS})"
    )
    parser.add_argument(
        "--min-throughput",
        type=_share,
        default=DEFAULT_MIN_THROUGHPUT,
        help=f"share of offered deltas to accept (default {DEFAULT_MIN_THROUGHPUT})",
    )
    parser.add_argument(
        "--staleness-bound-ms",
        type=_positive(float),
        default=None,
        help="staleness p99 bound for 'sustained' (default 2 x debounce)",
    )
    parser.add_argument(
        "--kill-streams",
        type=_positive(int),
        default=10,
        help="streams of the SIGKILL test (default 10)",
    )
    parser.add_argument(
        "--kill-after",
        type=_non_negative,
        default=2.0,
        help="seconds of streaming before the SIGKILL; 0 skips the test (default 2)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=_positive(float),
        default=None,
        help="wall-time limit per cell (default 60 + 3 T + 0.1 S)",
    )
    parser.add_argument("--seed", type=int, default=1, help="pacing seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        backend = make_url(args.url).get_backend_name()
    except Exception:
        parser.error(f"--url: not a database URL: {args.url!r}")
    if backend != "postgresql":
        parser.error("--url: a PostgreSQL URL (the SQLite peers use a temporary folder)")
    return Options(
        peers=args.peers,
        streams=args.streams,
        rate=args.rate,
        duration=args.duration,
        debounce=args.debounce,
        url=args.url,
        redis_url=args.redis_url,
        min_throughput=args.min_throughput,
        staleness_bound_ms=args.staleness_bound_ms,
        kill_streams=args.kill_streams,
        kill_after=args.kill_after,
        cell_timeout=args.cell_timeout,
        seed=args.seed,
        json=args.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    missing = [reason for p in options.peers if (reason := missing_package(p)) is not None]
    if missing and len(missing) == len(options.peers):
        raise SystemExit("\n".join(missing))
    report = run(options)
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 0 if report["cells"] else 1  # every peer skipped: nothing was measured


if __name__ == "__main__":
    raise SystemExit(main())
