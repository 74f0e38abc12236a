"""Scale-out on one PostgreSQL: ``python -m bench.scaleout`` (run from the repository root).

Per cell (N writers, S streams per writer, C SSE clients), on a fresh scratch database next to
``--url``:

* one ``messagestore serve`` process (the real command, a uvicorn subprocess on a free port);
* C SSE clients on ``GET /api/events`` (every session), raw HTTP/1.1 connections spread over
  ``--client-procs`` processes (``bench.scaleout_child clients``);
* one ``LISTEN messagestore_feed`` connection in this process, counting notifications;
* N writer processes (``bench.scaleout_child write``), each with its own store on the same
  database, streaming S text replies at R deltas/s with the default debounce, finishing each
  reply and starting the next.

The window opens when every writer streams and lasts ``--duration`` seconds. Measured in it:

* write commits/s: the writers' write-path commits (their commit hooks), and all commits of the
  database (``pg_stat_database.xact_commit``, which backends report at most once a second, so
  it lags by up to a second at either edge; it also counts the creates and the server's reads);
* NOTIFY/s: notifications heard on the LISTEN connection (one per writing transaction);
* feed latency: commit (a writer's commit hook) to receipt (a client's socket read that
  returned the bytes carrying that revision), per (revision, client), for revisions committed
  in the window; CLOCK_MONOTONIC is one clock for every process of the machine. A client that
  falls behind gets intermediate states merged, so ``delivered share`` = events per client ÷
  row states committed;
* events/s delivered: events all clients received in the window;
* CPU (cores) of the server process and of the writers together (``/proc/PID/stat``);
* deltas accepted vs offered (N x S x R).

A cell *bends* when feed p99 exceeds ``--p99-bound-ms`` (default one debounce + 50 ms, the
feed benchmark's target) or the delivered share falls below ``--min-delivered``.

A NOTIFY probe (``--notify-seconds``, 0 skips it) times the revision counter's bump as the
store commits it — with ``pg_notify`` and without, in alternating 0.1 s blocks, on 1 and 4
connections (every messagestore write transaction locks that row first, so commits of one
database are serialized through it): what one NOTIFY adds to a commit (median of the paired
differences), and the ceiling of commits/s.

Output: a table, or ``--json``; the ``model`` part extrapolates the measured points to
``--model-writers`` (100) writer processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from bench.stats import percentiles
from bench.write_path import ROOT, _Databases, _positive, _positive_int_list, machine_info

__all__ = ["Options", "main", "parse_args", "run"]

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
_CHANNEL = "messagestore_feed"  # messagestore._database._revisions.NOTIFY_CHANNEL
_TICKS = os.sysconf("SC_CLK_TCK")
_SERVING = re.compile(r"serving http://([^:/\s]+):(\d+)/")
_BUMP_NOTIFY = (
    "WITH bumped AS (UPDATE feed_state SET revision = revision + $1 WHERE id = 1 "
    "RETURNING revision) SELECT revision, pg_notify($2, $3 || ' ' || revision) FROM bumped"
)
_BUMP_PLAIN = "UPDATE feed_state SET revision = revision + $1 WHERE id = 1 RETURNING revision"


@dataclass(frozen=True, slots=True)
class Options:
    url: str = DEFAULT_URL
    writers: tuple[int, ...] = (1, 2, 4)
    streams: tuple[int, ...] = (10, 100)
    clients: tuple[int, ...] = (10, 100)
    rate: float = 20.0
    duration: float = 5.0
    debounce: float = 0.033
    client_procs: int = 2
    p99_bound_ms: float | None = None
    min_delivered: float = 0.9
    notify_seconds: float = 2.0
    model_writers: int = 100
    cell_timeout: float | None = None
    seed: int = 1
    json: bool = False

    @property
    def bound_ms(self) -> float:
        return self.p99_bound_ms if self.p99_bound_ms is not None else self.debounce * 1e3 + 50

    def timeout(self, writers: int, streams: int, clients: int) -> float:
        if self.cell_timeout is not None:
            return self.cell_timeout
        return 90 + 3 * self.duration + 0.05 * writers * streams + 0.05 * clients


# -- child processes -------------------------------------------------------------------------


class _Child:
    """A subprocess with its stdout read line by line and its stderr drained (kept for errors).

    ``stop()`` ends it if it still runs: the ``stop`` line (or SIGTERM), then SIGKILL."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.stderr: list[str] = []
        self._drain = asyncio.create_task(self._read_stderr())
        self.stderr_line = asyncio.Event()

    @classmethod
    async def start(cls, name: str, *args: str, stdin: bool = True) -> _Child:
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(name, process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())
            del self.stderr[:-200]
            self.stderr_line.set()

    async def expect(self, word: str) -> None:
        """Wait for the line ``word`` on stdout (raises if the process ends first)."""
        assert self.process.stdout is not None
        line = (await self.process.stdout.readline()).decode().strip()
        if line != word:
            await asyncio.wait_for(self.process.wait(), 10)
            raise RuntimeError(f"{self.name}: expected {word!r}, got {line!r}; {self.tail()}")

    def say(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{word}\n".encode())

    async def wait(self, within: float) -> int:
        code = await asyncio.wait_for(self.process.wait(), within)
        await self._drain
        if code != 0:
            raise RuntimeError(f"{self.name} exited {code}: {self.tail()}")
        return code

    def tail(self) -> str:
        return " | ".join(self.stderr[-3:]) or "no stderr"

    def cpu_seconds(self) -> float | None:
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    async def stop(self, *, term: bool = False) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                if term:
                    self.process.terminate()
                else:
                    self.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 20)
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        self._drain.cancel()
        await asyncio.gather(self._drain, return_exceptions=True)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


async def _start_server(url: str) -> tuple[_Child, str, int]:
    server = await _Child.start(
        "server", *_python("-m", "messagestore", "--url", url, "serve", "--port", "0"), stdin=False
    )
    async with asyncio.timeout(60):
        while True:
            for line in server.stderr:
                match = _SERVING.search(line)
                if match:
                    return server, match.group(1), int(match.group(2))
            if server.process.returncode is not None:
                raise RuntimeError(f"server exited: {server.tail()}")
            server.stderr_line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.stderr_line.wait(), 1)


# -- the database side -----------------------------------------------------------------------


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _migrate(url: str) -> None:
    from messagestore import open_store

    async with open_store(url):
        pass


class _Notifications:
    """A ``LISTEN messagestore_feed`` connection noting when each notification arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._conn: Any = None

    async def start(self, url: str) -> None:
        import asyncpg

        self._conn = await asyncpg.connect(_dsn(url))
        await self._conn.add_listener(_CHANNEL, self._heard)

    def _heard(self, *_: object) -> None:
        self.times.append(time.monotonic())

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()


async def _xact_commit(conn: Any) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    value = await conn.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(value)


# -- one cell ----------------------------------------------------------------------------------


async def _cell(
    url: str, options: Options, writers: int, streams: int, clients: int
) -> dict[str, Any]:
    import asyncpg

    await _migrate(url)
    children: list[_Child] = []
    listener = _Notifications()
    stats_conn: Any = None
    scratch = Path(tempfile.mkdtemp(prefix="msbench-scaleout-"))
    try:
        server, host, port = await _start_server(url)
        children.append(server)
        procs = max(1, min(options.client_procs, clients))
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        client_group: list[_Child] = []
        for i, count in enumerate(shares):
            out = scratch / f"clients-{i}.json"
            child = await _Child.start(
                f"clients {i}",
                *_python(
                    "-m", "bench.scaleout_child", "clients", host, str(port), str(count), str(out)
                ),
            )
            children.append(child)
            client_group.append(child)
        for child in client_group:
            await child.expect("ready")
        await listener.start(url)
        stats_conn = await asyncpg.connect(_dsn(url))
        writer_group: list[_Child] = []
        for i in range(writers):
            out = scratch / f"writer-{i}.json"
            child = await _Child.start(
                f"writer {i}",
                *_python(
                    "-m",
                    "bench.scaleout_child",
                    "write",
                    url,
                    str(out),
                    str(streams),
                    str(options.rate),
                    str(options.debounce),
                    str(options.seed + i),
                ),
            )
            children.append(child)
            writer_group.append(child)
        for child in writer_group:
            await child.expect("ready")
        for child in writer_group:
            child.say("go")
        for child in writer_group:
            await child.expect("streaming")
        start = time.monotonic()
        commits_before = await _xact_commit(stats_conn)
        server_cpu = server.cpu_seconds()
        writers_cpu = [w.cpu_seconds() for w in writer_group]
        await asyncio.sleep(options.duration)
        end = time.monotonic()
        commits_after = await _xact_commit(stats_conn)
        server_cpu_end = server.cpu_seconds()
        writers_cpu_end = [w.cpu_seconds() for w in writer_group]
        for child in writer_group:
            child.say("stop")
        for child in writer_group:
            await child.wait(60 + 0.05 * streams)
        await asyncio.sleep(1.0)  # the clients read the tail
        for child in client_group:
            child.say("stop")
        for child in client_group:
            await child.wait(60)
        written = [json.loads((scratch / f"writer-{i}.json").read_text()) for i in range(writers)]
        received: list[list[list[float]]] = []
        for i in range(procs):
            received += json.loads((scratch / f"clients-{i}.json").read_text())["received"]
    finally:
        for child in reversed(children):
            await child.stop(term=child.name == "server")
        await listener.stop()
        if stats_conn is not None:
            await stats_conn.close()
        shutil.rmtree(scratch, ignore_errors=True)
    window = end - start
    figures = _figures(options, written, received, listener.times, start, end)
    figures.update(
        writers=writers,
        streams=streams,
        clients=clients,
        client_procs=procs,
        window_s=window,
        offered_per_s=writers * streams * options.rate,
        db_commits_per_s=(commits_after - commits_before) / window,
        server_cpu=_cores(server_cpu, server_cpu_end, window),
        writers_cpu=sum(
            _cores(a, b, window) or 0.0 for a, b in zip(writers_cpu, writers_cpu_end, strict=True)
        ),
    )
    bent, reason = _bent(figures, options)
    figures.update(status="ok", error="", bent=bent, reason=reason)
    return figures


def _cores(before: float | None, after: float | None, window: float) -> float | None:
    if before is None or after is None:
        return None
    return (after - before) / window


def _at(samples: Sequence[Sequence[float]], t: float) -> float:
    """The counter of (time, count) samples at ``t``, interpolated."""
    if not samples:
        return 0.0
    if t <= samples[0][0]:
        return float(samples[0][1])
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return float(samples[-1][1])


def _figures(
    options: Options,
    written: list[dict[str, Any]],
    received: list[list[list[float]]],
    notifications: list[float],
    start: float,
    end: float,
) -> dict[str, Any]:
    window = end - start

    def inside(t: float) -> bool:
        return start <= t <= end

    committed: dict[int, float] = {}
    for writer in written:
        committed.update((int(rev), t) for rev, t in writer["commits"])
    in_window = {rev: t for rev, t in committed.items() if inside(t)}
    transactions = [tx for w in written for tx in w["transactions"] if inside(tx[0])]
    deltas = sum(_at(w["deltas"], end) - _at(w["deltas"], start) for w in written)
    latencies: list[float] = []
    events = 0
    for connection in received:
        for rev, t in connection:
            if inside(t):
                events += 1
            at = in_window.get(int(rev))
            if at is not None:
                latencies.append((t - at) * 1e3)
    p50, p99, top = percentiles(latencies, (50, 99, 100))
    tx_p50, tx_p99 = percentiles([tx[2] * 1e3 for tx in transactions], (50, 99))
    rows = len(in_window)
    per_client = events / len(received) if received else 0.0
    return {
        "deltas_per_s": deltas / window,
        "write_tx_per_s": len(transactions) / window,
        "write_tx_p50_ms": tx_p50,
        "write_tx_p99_ms": tx_p99,
        "rows_per_s": rows / window,
        "notify_per_s": sum(1 for t in notifications if inside(t)) / window,
        "feed_samples": len(latencies),
        "feed_p50_ms": p50,
        "feed_p99_ms": p99,
        "feed_max_ms": top,
        "events_per_s": events / window,
        "events_per_client_per_s": per_client / window,
        # Of the row states committed in the window, the share each client received (the
        # creates' events, not write-path rows, are left out of both sides).
        "delivered_share": len(latencies) / len(received) / rows if rows and received else None,
    }


def _bent(cell: dict[str, Any], options: Options) -> tuple[bool, str]:
    p99 = cell.get("feed_p99_ms")
    share = cell.get("delivered_share")
    reasons = []
    if p99 is None:
        reasons.append("no feed latency measured")
    elif p99 > options.bound_ms:
        reasons.append(f"feed p99 {p99:.0f} ms > {options.bound_ms:g} ms")
    if share is not None and share < options.min_delivered:
        reasons.append(f"delivered share {share:.0%} < {options.min_delivered:.0%}")
    return bool(reasons), "; ".join(reasons)


# -- the NOTIFY probe --------------------------------------------------------------------------


async def notify_probe(
    url: str, seconds: float, connections: Sequence[int] = (1, 4), block: float = 0.1
) -> dict[str, Any]:
    """Commits/s of the counter bump alone, with and without ``pg_notify``, on J connections
    at once, while one connection LISTENs on the channel as a server's feed does.

    The two variants alternate in blocks of ``block`` seconds (``seconds`` per variant in
    all), and what is reported are medians: of each variant's block rates, and of the
    differences within each pair of adjacent blocks (what one NOTIFY adds to a commit). On a
    shared machine the rate drifts from second to second; the pairs cancel the drift.
    """
    import asyncpg

    await _migrate(url)
    dsn = _dsn(url)
    listener = _Notifications()
    await listener.start(url)
    conns = [await asyncpg.connect(dsn) for _ in range(max(connections))]
    rows: list[dict[str, Any]] = []
    try:
        for j in connections:
            us: dict[str, list[float]] = {"plain": [], "notify": []}
            for turn in range(max(1, round(seconds / block))):
                for variant in ("notify", "plain") if turn % 2 == 0 else ("plain", "notify"):
                    statement = _BUMP_NOTIFY if variant == "notify" else _BUMP_PLAIN
                    args: tuple[Any, ...] = (1, _CHANNEL, "probe") if variant == "notify" else (1,)
                    deadline = time.monotonic() + block

                    async def loop(
                        conn: Any,
                        statement: str = statement,
                        args: Any = args,
                        deadline: float = deadline,
                    ) -> int:
                        done = 0
                        while time.monotonic() < deadline:
                            async with conn.transaction():
                                await conn.fetchrow(statement, *args)
                            done += 1
                        return done

                    began = time.monotonic()
                    done = sum(await asyncio.gather(*(loop(c) for c in conns[:j])))
                    us[variant].append((time.monotonic() - began) * 1e6 / max(done, 1))
            plain = statistics.median(us["plain"])
            notify = statistics.median(us["notify"])
            paired = [n - p for n, p in zip(us["notify"], us["plain"], strict=True)]
            rows.append(
                {
                    "connections": j,
                    "blocks": len(paired),
                    "plain_us_per_commit": plain,
                    "plain_commits_per_s": 1e6 / plain,
                    "notify_us_per_commit": notify,
                    "notify_commits_per_s": 1e6 / notify,
                    "notify_cost_us": statistics.median(paired),
                    "notify_cost_iqr_us": _iqr(paired),
                }
            )
    finally:
        for conn in conns:
            await conn.close()
        await listener.stop()
    return {"seconds": seconds, "heard": len(listener.times), "rows": rows}


def _iqr(values: Sequence[float]) -> list[float | None]:
    return percentiles(values, (25, 75))


# -- the model -------------------------------------------------------------------------------


def build_model(
    options: Options, cells: list[dict[str, Any]], probe: dict[str, Any] | None
) -> dict[str, Any]:
    """Extrapolate the measured cells to ``options.model_writers`` writer processes, linear in N
    from the largest N measured that did not bend (else the smallest), per (S, C).

    Every writing transaction takes the revision counter's row lock first and holds it to its
    commit, so the database's writing commits are serial: its ceiling is 1 / (time a commit
    holds the row). Two bounds: the probe's bare bump (the least a commit can hold it) and the
    writers' own group commit (take -> commit, at the smallest N: the most it holds it without
    waiting for other writers). NOTIFY/s = writing commits/s (one each). Also: how much of
    each second the serial path spends in NOTIFY, and the N at which the one server process
    would need a whole core (its CPU per writer, from the largest N).
    """
    bump_ceiling = notify_cost = None
    if probe and probe["rows"]:
        last = probe["rows"][-1]
        bump_ceiling = last["notify_commits_per_s"]
        notify_cost = last["notify_cost_us"]
    rows = []
    ok = [c for c in cells if c.get("status") == "ok"]
    for streams in options.streams:
        for clients in options.clients:
            measured = [c for c in ok if c["streams"] == streams and c["clients"] == clients]
            if not measured:
                continue
            low = min(measured, key=lambda c: c["writers"])
            # From the largest N still in the linear part (not bent): a bent cell's writers
            # were slowed by the machine, which would understate what each writer asks for.
            top = max(
                (c for c in measured if not c.get("bent")), default=low, key=lambda c: c["writers"]
            )
            per_writer = top["notify_per_s"] / top["writers"]
            at_model = per_writer * options.model_writers
            hold_ms = low.get("write_tx_p50_ms")
            cpu_per_writer = (top.get("server_cpu") or 0.0) / top["writers"]
            rows.append(
                {
                    "streams": streams,
                    "clients": clients,
                    "from_writers": top["writers"],
                    "commits_per_s_per_writer": per_writer,
                    "commits_per_s_at_model": at_model,
                    "bump_ceiling_per_s": bump_ceiling,
                    "writers_at_bump_ceiling": _ratio(bump_ceiling, per_writer),
                    "hold_ms": hold_ms,
                    "commit_ceiling_per_s": _ratio(1e3, hold_ms),
                    "writers_at_commit_ceiling": _ratio(_ratio(1e3, hold_ms), per_writer),
                    "notify_s_per_s_at_model": (
                        None if notify_cost is None else at_model * notify_cost / 1e6
                    ),
                    "writers_at_notify_saturation": _ratio(
                        1e6, None if notify_cost is None else notify_cost * per_writer
                    ),
                    "server_cpu_per_writer": cpu_per_writer,
                    "writers_at_one_server_core": _ratio(1.0, cpu_per_writer),
                    "server_cores_at_model": cpu_per_writer * options.model_writers,
                }
            )
    return {"model_writers": options.model_writers, "notify_cost_us": notify_cost, "rows": rows}


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom or bottom <= 0 else top / bottom


# -- the run -----------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[bench.scaleout] {message}", file=sys.stderr, flush=True)


def run(options: Options) -> dict[str, Any]:
    databases = _Databases(options.url)
    machine = machine_info()
    cells: list[dict[str, Any]] = []
    probe: dict[str, Any] | None = None
    try:
        for streams in options.streams:
            for clients in options.clients:
                for writers in options.writers:
                    label = f"N={writers} S={streams} C={clients}"
                    started = time.monotonic()
                    with databases.fresh(f"scaleout-{writers}-{streams}-{clients}") as url:
                        try:
                            cell = asyncio.run(
                                asyncio.wait_for(
                                    _cell(url, options, writers, streams, clients),
                                    options.timeout(writers, streams, clients),
                                )
                            )
                        except Exception as exc:  # reported, the sweep goes on
                            cell = {
                                "writers": writers,
                                "streams": streams,
                                "clients": clients,
                                "status": "timeout" if isinstance(exc, TimeoutError) else "error",
                                "error": repr(exc)[:500],
                                "bent": True,
                                "reason": "failed",
                            }
                    cell["wall_s"] = time.monotonic() - started
                    cells.append(cell)
                    _progress(f"{label}: {_describe(cell)}")
        if options.notify_seconds > 0:
            _progress("NOTIFY probe")
            with databases.fresh("scaleout-notify") as url:
                probe = asyncio.run(notify_probe(url, options.notify_seconds))
    finally:
        databases.close()
    machine["load_average_end"] = list(os.getloadavg())
    config = asdict(options)
    config["url"] = make_url(options.url).render_as_string(hide_password=True)
    config["p99_bound_ms"] = options.bound_ms
    report = {
        "benchmark": "messagestore scale-out on one PostgreSQL",
        "config": config,
        "machine": machine,
        "cells": cells,
        "bends": _bends(cells, options),
        "notify_probe": probe,
    }
    report["model"] = build_model(options, cells, probe)
    return report


def _bends(cells: list[dict[str, Any]], options: Options) -> list[dict[str, Any]]:
    """Per (S, C): the smallest N that bent, and why (None: no N measured bent)."""
    found = []
    for streams in options.streams:
        for clients in options.clients:
            own = sorted(
                (c for c in cells if c["streams"] == streams and c["clients"] == clients),
                key=lambda c: c["writers"],
            )
            first = next((c for c in own if c.get("bent")), None)
            found.append(
                {
                    "streams": streams,
                    "clients": clients,
                    "bends_at_writers": None if first is None else first["writers"],
                    "reason": "" if first is None else first.get("reason", ""),
                }
            )
    return found


def _describe(cell: dict[str, Any]) -> str:
    if cell["status"] != "ok":
        return f"{cell['status']}: {cell['error']}"
    return (
        f"{cell['deltas_per_s']:,.0f}/{cell['offered_per_s']:,.0f} deltas/s, "
        f"{cell['write_tx_per_s']:.0f} write tx/s, {cell['notify_per_s']:.0f} NOTIFY/s, "
        f"feed p99 {_num(cell['feed_p99_ms'], 1)} ms, {cell['events_per_s']:,.0f} events/s, "
        f"server {_num(cell['server_cpu'], 2)} cores"
        + (f" - bent ({cell['reason']})" if cell["bent"] else "")
    )


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{float(value):,.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("N", lambda c: str(c["writers"])),
    ("S/writer", lambda c: f"{c['streams']:,}"),
    ("C", lambda c: f"{c['clients']:,}"),
    (
        "deltas/s (offered)",
        lambda c: f"{_num(c.get('deltas_per_s'))} ({_num(c.get('offered_per_s'))})",
    ),
    ("write tx/s", lambda c: _num(c.get("write_tx_per_s"), 1)),
    ("db commits/s", lambda c: _num(c.get("db_commits_per_s"), 1)),
    ("NOTIFY/s", lambda c: _num(c.get("notify_per_s"), 1)),
    ("rows/s", lambda c: _num(c.get("rows_per_s"))),
    ("feed p50 ms", lambda c: _num(c.get("feed_p50_ms"), 1)),
    ("feed p99 ms", lambda c: _num(c.get("feed_p99_ms"), 1)),
    ("events/s", lambda c: _num(c.get("events_per_s"))),
    ("delivered share", lambda c: _pct(c.get("delivered_share"))),
    ("server CPU", lambda c: _num(c.get("server_cpu"), 2)),
    ("writers CPU", lambda c: _num(c.get("writers_cpu"), 2)),
    ("bent", lambda c: ("yes: " + c.get("reason", "")) if c.get("bent") else "no"),
]


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return [
        line(headers),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(r) for r in rows),
    ]


def render(report: dict[str, Any]) -> str:
    config, machine = report["config"], report["machine"]
    lines = [
        f"messagestore scale-out - PostgreSQL, R={config['rate']:g} deltas/s per stream, "
        f"T={config['duration']:g} s, debounce={config['debounce'] * 1e3:g} ms, "
        f"{config['client_procs']} client process(es), 1 run per cell",
        f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"{machine['date']}, load average "
        + "/".join(f"{x:.1f}" for x in machine["load_average"])
        + " -> "
        + "/".join(f"{x:.1f}" for x in machine["load_average_end"])
        + f", sum(range(1000)) takes {machine['calibration_us']:.1f} us, "
        f"commit {machine['commit']}",
        f"bent = feed p99 > {config['p99_bound_ms']:g} ms or delivered share < "
        f"{config['min_delivered']:.0%}; CPU in cores (1.00 = one core busy)",
        "",
    ]
    ok = [c for c in report["cells"] if c["status"] == "ok"]
    lines += _markdown([h for h, _ in _COLUMNS], [[f(c) for _, f in _COLUMNS] for c in ok])
    for cell in report["cells"]:
        if cell["status"] != "ok":
            lines.append(
                f"! N={cell['writers']} S={cell['streams']} C={cell['clients']}: "
                f"{cell['status']} - {cell['error']}"
            )
    lines.append("")
    for bend in report["bends"]:
        where = (
            "did not bend at any N measured"
            if bend["bends_at_writers"] is None
            else f"bends at N={bend['bends_at_writers']} ({bend['reason']})"
        )
        lines.append(f"S={bend['streams']:,} per writer, C={bend['clients']:,}: {where}")
    probe = report.get("notify_probe")
    if probe:
        lines += [
            "",
            "NOTIFY probe: the counter bump alone, commits/s (us per commit), medians of "
            f"{probe['rows'][0]['blocks']} alternating block pairs",
        ]
        rows = [
            [
                str(r["connections"]),
                f"{r['plain_commits_per_s']:,.0f} ({r['plain_us_per_commit']:,.0f})",
                f"{r['notify_commits_per_s']:,.0f} ({r['notify_us_per_commit']:,.0f})",
                f"{r['notify_cost_us']:,.0f} ({_num(r['notify_cost_iqr_us'][0])} to "
                f"{_num(r['notify_cost_iqr_us'][1])})",
            ]
            for r in probe["rows"]
        ]
        headers = ["connections", "no NOTIFY", "with NOTIFY", "NOTIFY us/commit (IQR)"]
        lines += _markdown(headers, rows)
    model = report.get("model")
    if model and model["rows"]:
        n = model["model_writers"]
        lines += [
            "",
            f"model: extrapolated to N={n}, linear in N from the largest N measured that did "
            "not bend (commits = writing commits = NOTIFYs)",
        ]
        rows = [
            [
                f"{r['streams']:,}",
                f"{r['clients']:,}",
                str(r["from_writers"]),
                _num(r["commits_per_s_per_writer"], 1),
                _num(r["commits_per_s_at_model"]),
                _num(r["hold_ms"], 2),
                _num(r["writers_at_commit_ceiling"]),
                _num(r["writers_at_bump_ceiling"]),
                _num(r["notify_s_per_s_at_model"], 2),
                _num(r["writers_at_notify_saturation"]),
                _num(r["writers_at_one_server_core"], 1),
                _num(r["server_cores_at_model"], 1),
            ]
            for r in model["rows"]
        ]
        lines += _markdown(
            [
                "S/writer",
                "C",
                "from N",
                "commits/s per writer",
                f"commits/s at N={n}",
                "group commit ms",
                "N at commit ceiling",
                "N at bare-bump ceiling",
                f"NOTIFY s/s at N={n}",
                "N where NOTIFY alone fills",
                "N at 1 server core",
                f"server cores at N={n}",
            ],
            rows,
        )
    return "\n".join(lines)


# -- the command line --------------------------------------------------------------------------


def _share(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaleout",
        description="Scale-out on one PostgreSQL: N writer processes x S streams, one "
        "`messagestore serve`, C SSE clients (see the module docstring).",
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="PostgreSQL URL; every cell runs in a scratch database created next to it "
        f"(needs CREATEDB; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--writers",
        type=_positive_int_list,
        default=(1, 2, 4),
        metavar="N,N,...",
        help="writer processes to sweep (default 1,2,4)",
    )
    parser.add_argument(
        "--streams",
        type=_positive_int_list,
        default=(10, 100),
        metavar="S,S,...",
        help="streams per writer process (default 10,100)",
    )
    parser.add_argument(
        "--clients",
        type=_positive_int_list,
        default=(10, 100),
        metavar="C,C,...",
        help="SSE clients on GET /api/events (default 10,100)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=20.0,
        help="deltas per second per stream (default 20)",
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=5.0,
        help="seconds of the measured window per cell (default 5)",
    )
    parser.add_argument(
        "--debounce",
        type=_positive(float),
        default=0.033,
        help="the writers' debounce in seconds (default 0.033)",
    )
    parser.add_argument(
        "--client-procs",
        type=_positive(int),
        default=2,
        help="processes the SSE clients are spread over (default 2)",
    )
    parser.add_argument(
        "--p99-bound-ms",
        type=_positive(float),
        default=None,
        help="feed p99 above this bends a cell (default debounce + 50 ms)",
    )
    parser.add_argument(
        "--min-delivered",
        type=_share,
        default=0.9,
        help="delivered share below this bends a cell (default 0.9)",
    )
    parser.add_argument(
        "--notify-seconds",
        type=_non_negative,
        default=2.0,
        help="seconds per variant of the NOTIFY probe; 0 skips it (default 2)",
    )
    parser.add_argument(
        "--model-writers",
        type=_positive(int),
        default=100,
        help="writer processes the model extrapolates to (default 100)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=_positive(float),
        default=None,
        help="wall-time limit per cell (default 90 + 3 T + 0.05 N S + 0.05 C)",
    )
    parser.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        backend = make_url(args.url).get_backend_name()
    except Exception:
        parser.error(f"--url: not a database URL: {args.url!r}")
    if backend != "postgresql":
        parser.error("--url: scale-out needs PostgreSQL (LISTEN/NOTIFY, several writer processes)")
    return Options(
        url=args.url,
        writers=args.writers,
        streams=args.streams,
        clients=args.clients,
        rate=args.rate,
        duration=args.duration,
        debounce=args.debounce,
        client_procs=args.client_procs,
        p99_bound_ms=args.p99_bound_ms,
        min_delivered=args.min_delivered,
        notify_seconds=args.notify_seconds,
        model_writers=args.model_writers,
        cell_timeout=args.cell_timeout,
        seed=args.seed,
        json=args.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"bench.scaleout runs `messagestore serve`, which needs {exc.name}: "
            'pip install -e ".[bench]"'
        ) from None
    from bench.peers import postgres_problem

    problem = postgres_problem(options.url)
    if problem is not None:
        raise SystemExit(f"bench.scaleout: {problem}")
    report = run(options)
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
