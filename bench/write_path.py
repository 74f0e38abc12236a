"""The write-path benchmark: ``python -m bench`` (run from the repository root).

S concurrent simulated streams (``messagestore._demo``, pure text, growing), each at
R deltas per second for T seconds, against each write strategy in the same run:

1. ``write-through`` — one synchronous write per delta (``debounce=0``);
2. ``per-message`` — debounced, but each message written in its own transaction (the Go design);
3. ``group`` — debounced group commit, one transaction per tick (the default).

Every (strategy, S) cell runs in a fresh child process (``python -m bench.cell``) on a fresh
database — a new SQLite file, or a new PostgreSQL database next to the one ``--url`` names — with
a wall-time limit: a cell that cannot keep up is cut off and reported as not sustained. A cell
*sustains* its load when it accepts at least ``--min-throughput`` of the offered deltas and its
staleness p99 (accepted → durable) stays within 2 x debounce. A separate cell per debounced
strategy times ``flush_all()`` with ``--flush-messages`` pending messages.

Output: a table (markdown, readable in a terminal), or ``--json``; ``--plot PATH`` writes a PNG of
transactions/s and staleness against S (needs the ``plot`` extra: ``pip install -e ".[plot]"``).
See ``bench/cell.py`` for exactly what is measured and how.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.report import build_report, render_table
from bench.spec import CellSpec, Strategy
from bench.stats import DEFAULT_MIN_THROUGHPUT, median_of

__all__ = ["Options", "aggregate_runs", "main", "parse_args", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STREAMS = (1, 10, 100, 1000)
DEFAULT_STRATEGIES = (Strategy.WRITE_THROUGH, Strategy.PER_MESSAGE, Strategy.GROUP)
PLOT_HINT = 'pip install -e ".[plot]"'


@dataclass(frozen=True, slots=True)
class Options:
    """The parsed command line."""

    streams: tuple[int, ...] = DEFAULT_STREAMS
    rate: float = 50.0
    duration: float = 5.0
    debounce: float = 0.033
    strategies: tuple[Strategy, ...] = DEFAULT_STRATEGIES
    url: str | None = None
    repeats: int = 1
    flush_messages: int = 1000
    flush_repeats: int = 5
    min_throughput: float = DEFAULT_MIN_THROUGHPUT
    cell_timeout: float | None = None
    seed: int = 1
    json: bool = False
    plot: Path | None = None
    save: Path | None = None
    load: Path | None = None
    command: list[str] = field(default_factory=list)

    @property
    def staleness_bound_ms(self) -> float:
        return 2 * self.debounce * 1e3

    def stream_timeout(self, streams: int) -> float:
        """Wall-time limit of one stream cell: warm-up (3 creates per stream), window, teardown."""
        if self.cell_timeout is not None:
            return self.cell_timeout
        return 60 + 4 * self.duration + 0.06 * streams

    def flush_timeout(self) -> float:
        if self.cell_timeout is not None:
            return self.cell_timeout
        return 60 + 0.03 * self.flush_messages * (1 + self.flush_repeats)


# -- the command line -----------------------------------------------------------------------


def _positive_int_list(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part.replace("_", "")) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers like 1,10,100, not {value!r}"
        ) from None
    if not numbers:
        raise argparse.ArgumentTypeError("expected at least one stream count")
    if any(n < 1 for n in numbers):
        raise argparse.ArgumentTypeError(f"stream counts must be at least 1, not {value!r}")
    return tuple(sorted(set(numbers)))


def _strategies(value: str) -> tuple[Strategy, ...]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    known = ", ".join(s.value for s in Strategy)
    chosen: list[Strategy] = []
    for name in names:
        try:
            strategy = Strategy(name)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"unknown strategy {name!r}; choose from {known}"
            ) from None
        if strategy not in chosen:
            chosen.append(strategy)
    if not chosen:
        raise argparse.ArgumentTypeError(f"expected at least one strategy from {known}")
    return tuple(s for s in Strategy if s in chosen)


def _positive(kind: type[float] | type[int]) -> Any:
    def convert(value: str) -> float | int:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {value}")
        return number

    return convert


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def _share(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark messagestore's write path: S simulated text streams at R deltas/s for "
            "T seconds against write-through, per-message and group-commit writes."
        ),
    )
    parser.add_argument(
        "--streams",
        type=_positive_int_list,
        default=DEFAULT_STREAMS,
        metavar="S,S,...",
        help="concurrent streams to sweep (default: 1,10,100,1000)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=50.0,
        metavar="R",
        help="deltas per second per stream (default: 50)",
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=5.0,
        metavar="T",
        help="seconds of streaming per cell (default: 5)",
    )
    parser.add_argument(
        "--debounce",
        type=_positive(float),
        default=0.033,
        metavar="SECONDS",
        help="write window of the debounced strategies (default: 0.033)",
    )
    parser.add_argument(
        "--strategies",
        type=_strategies,
        default=DEFAULT_STRATEGIES,
        metavar="NAME,...",
        help="any of write-through,per-message,group (default: all three)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help=(
            "database: a PostgreSQL URL (each cell gets a scratch database created next to it "
            "and dropped after; needs CREATEDB) or an SQLite URL whose folder holds the cell "
            "files (default: SQLite files in a temporary folder)"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=_positive(int),
        default=1,
        help="run every cell this many times and report medians (default: 1)",
    )
    parser.add_argument(
        "--flush-messages",
        type=_non_negative_int,
        default=1000,
        metavar="N",
        help="pending messages for the flush_all() timing; 0 skips it (default: 1000)",
    )
    parser.add_argument(
        "--flush-repeats",
        type=_positive(int),
        default=5,
        metavar="N",
        help="flush_all() timings per strategy; the median is reported (default: 5)",
    )
    parser.add_argument(
        "--min-throughput",
        type=_share,
        default=DEFAULT_MIN_THROUGHPUT,
        metavar="SHARE",
        help=(
            "share of the offered deltas a cell must accept to count as sustained "
            f"(default: {DEFAULT_MIN_THROUGHPUT})"
        ),
    )
    parser.add_argument(
        "--cell-timeout",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="wall-time limit per cell (default: 60 + 4 T + 0.06 S)",
    )
    parser.add_argument("--seed", type=int, default=1, help="workload seed (default: 1)")
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the JSON report to PATH",
    )
    parser.add_argument(
        "--from",
        dest="load",
        type=Path,
        default=None,
        metavar="PATH",
        help="do not run anything: print (and plot) a report saved with --save or --json",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"write a PNG of transactions/s and staleness against S (needs {PLOT_HINT})",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse and check the command line (exits with status 2 and a message on bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    url: str | None = args.url
    if url is not None:
        try:
            backend = make_url(url).get_backend_name()
        except Exception:
            parser.error(f"--url: not a database URL: {url!r}")
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"--url: unsupported backend {backend!r}; use sqlite or postgresql")
        if backend == "sqlite" and _sqlite_folder(url) is None:
            parser.error("--url: an SQLite URL must name a file (sqlite+aiosqlite:///path.db)")
    if args.load is not None and not args.load.is_file():
        parser.error(f"--from: no such file: {args.load}")
    return Options(
        streams=args.streams,
        rate=args.rate,
        duration=args.duration,
        debounce=args.debounce,
        strategies=args.strategies,
        url=url,
        repeats=args.repeats,
        flush_messages=args.flush_messages,
        flush_repeats=args.flush_repeats,
        min_throughput=args.min_throughput,
        cell_timeout=args.cell_timeout,
        seed=args.seed,
        json=args.json,
        plot=args.plot,
        save=args.save,
        load=args.load,
        command=["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
    )


# -- databases: a fresh one per cell -----------------------------------------------------------


def _sqlite_folder(url: str) -> Path | None:
    database = make_url(url).database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve().parent


class _Databases:
    """Hands out a fresh database URL per cell and removes it afterwards."""

    def __init__(self, url: str | None) -> None:
        self._base = url
        self._counter = 0
        self._tmp: Path | None = None
        self.backend = "sqlite" if url is None else make_url(url).get_backend_name()

    @contextlib.contextmanager
    def fresh(self, label: str) -> Iterator[str]:
        self._counter += 1
        name = f"msbench_{os.getpid()}_{self._counter}"
        if self.backend == "postgresql":
            assert self._base is not None
            asyncio.run(_pg_admin(self._base, f'CREATE DATABASE "{name}"'))
            try:
                yield make_url(self._base).set(database=name).render_as_string(False)
            finally:
                asyncio.run(_pg_admin(self._base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        folder = self._folder()
        path = folder / f"{name}-{label}.db"
        _remove_sqlite(path)
        try:
            yield f"sqlite+aiosqlite:///{path}"
        finally:
            _remove_sqlite(path)

    def _folder(self) -> Path:
        if self._base is not None:
            folder = _sqlite_folder(self._base)
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="msbench-"))
        return self._tmp

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()


async def _pg_admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


# -- running cells -------------------------------------------------------------------------------


def run_child(spec: CellSpec, timeout: float) -> dict[str, Any]:
    """Run one cell in a fresh ``python -m bench.cell`` process, cut off after ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="msbench-cell-") as scratch:
        result_path = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "bench.cell", spec.to_json(), str(result_path)]
        started = time.monotonic()
        status, error = "ok", ""
        try:
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            status, error = "timeout", f"cut off after {timeout:.0f} s"
        else:
            if done.returncode != 0:
                tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
                status, error = "error", f"exit {done.returncode}: {tail[0]}"
        figures: dict[str, Any] = {}
        if result_path.exists():
            figures = json.loads(result_path.read_text())
    if status == "ok" and figures.get("phase") != "done":
        status, error = "error", "the cell wrote no final figures"
    figures.update(
        kind=spec.kind,
        strategy=spec.strategy.value,
        streams=spec.streams,
        status=status,
        error=error,
        wall_s=time.monotonic() - started,
    )
    return figures


_NOT_AGGREGATED = frozenset({"kind", "phase", "status", "error", "strategy", "streams"})


def aggregate_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its repeats: the median of every number, the worst status."""
    if not runs:
        raise ValueError("no runs to aggregate")
    first = runs[0]
    cell: dict[str, Any] = {k: first[k] for k in ("kind", "strategy", "streams") if k in first}
    failed = [r for r in runs if r.get("status", "ok") != "ok"]
    cell["status"] = failed[0]["status"] if failed else "ok"
    cell["error"] = failed[0].get("error", "") if failed else ""
    cell["repeats"] = len(runs)
    keys = [k for k in first if k not in _NOT_AGGREGATED]
    for run in runs[1:]:
        keys.extend(k for k in run if k not in _NOT_AGGREGATED and k not in keys)
    for key in keys:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len([v for v in values if v is not None]):
            cell[key] = median_of(numbers)
        elif key in first:
            cell[key] = first[key]
    return cell


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(cell: dict[str, Any]) -> str:
    if cell["status"] != "ok":
        return f"{cell['status']}: {cell.get('error', '')}"
    if cell["kind"] == "flush":
        return f"flush_all {cell.get('flush_all_ms', 0):.1f} ms"
    stale = cell.get("staleness_p99_ms")
    cpu = cell.get("cpu_us_per_delta")
    return (
        f"{cell.get('deltas_per_s', 0):,.0f}/{cell.get('offered_per_s', 0):,.0f} deltas/s, "
        f"{cell.get('transactions_per_s', 0):,.1f} tx/s, staleness p99 "
        + ("-" if stale is None else f"{stale:.1f} ms")
        + ("" if cpu is None else f", CPU {cpu:.1f} us/delta")
    )


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cores": cores,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "calibration_us": calibration_us(),
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The checked-out commit (``+`` if the tree has changes), or None outside a git tree."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "")


def calibration_us() -> float:
    """Median time of ``sum(range(1000))`` in microseconds: how fast this CPU runs Python now.

    A quick yardstick for comparing figures across machines (and across moments on a shared
    one); a typical recent desktop or laptop core takes roughly 10 us.
    """
    samples = timeit.repeat("sum(range(1000))", repeat=7, number=2000)
    return statistics.median(samples) / 2000 * 1e6


def run_benchmark(options: Options) -> dict[str, Any]:
    """Run every cell (children, one at a time) and build the report."""
    databases = _Databases(options.url)
    machine = machine_info()
    started = time.monotonic()
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    flush_runs: dict[str, list[dict[str, Any]]] = {}
    flushed = [s for s in options.strategies if s is not Strategy.WRITE_THROUGH]
    total = options.repeats * len(options.streams) * len(options.strategies)
    total += len(flushed) if options.flush_messages else 0
    done = 0
    try:
        for repeat in range(options.repeats):
            for streams in options.streams:
                for strategy in options.strategies:
                    with databases.fresh(f"{strategy.value}-{streams}") as url:
                        spec = CellSpec(
                            "stream",
                            strategy,
                            url,
                            streams=streams,
                            rate=options.rate,
                            duration=options.duration,
                            debounce=options.debounce,
                            seed=options.seed + repeat,
                        )
                        run = run_child(spec, options.stream_timeout(streams))
                    runs.setdefault((strategy.value, streams), []).append(run)
                    done += 1
                    _progress(f"[{done}/{total}] {strategy.value} S={streams}: {_describe(run)}")
        if options.flush_messages:
            for strategy in flushed:
                with databases.fresh(f"{strategy.value}-flush") as url:
                    spec = CellSpec(
                        "flush",
                        strategy,
                        url,
                        debounce=options.debounce,
                        flush_messages=options.flush_messages,
                        flush_repeats=options.flush_repeats,
                    )
                    run = run_child(spec, options.flush_timeout())
                flush_runs.setdefault(strategy.value, []).append(run)
                done += 1
                _progress(f"[{done}/{total}] {strategy.value} flush_all: {_describe(run)}")
    finally:
        databases.close()
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    machine["wall_s"] = time.monotonic() - started
    cells = [aggregate_runs(r) for r in runs.values()]
    for cell, cell_runs in zip(cells, runs.values(), strict=True):
        cell["runs"] = cell_runs if options.repeats > 1 else []
    flushes = {name: aggregate_runs(r) for name, r in flush_runs.items()}
    config = asdict(options)
    for key in ("plot", "save", "load"):
        config[key] = None if config[key] is None else str(config[key])
    config["strategies"] = [s.value for s in options.strategies]
    config["backend"] = databases.backend
    config["url"] = _redact(options.url)
    return build_report(config, machine, cells, flushes)


def _redact(url: str | None) -> str | None:
    if url is None:
        return None
    return make_url(url).render_as_string(hide_password=True)


def _require_matplotlib() -> None:
    """Fail before the sweep if ``--plot`` cannot work (without importing matplotlib now)."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise SystemExit(
            f"--plot needs matplotlib, which is not installed; install it with: {PLOT_HINT}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if options.plot is not None:
        _require_matplotlib()
    if options.load is not None:  # judged again, so the current rules apply
        saved = json.loads(options.load.read_text())
        report = build_report(saved["config"], saved["machine"], saved["cells"], saved["flush_all"])
    else:
        report = run_benchmark(options)
    if options.save is not None:
        options.save.write_text(json.dumps(report, indent=2) + "\n")
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report))
    if options.plot is not None:
        from bench.plot import write_plot

        write_plot(report, options.plot)
        _progress(f"plot written to {options.plot}")
    return 0
