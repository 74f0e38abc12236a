"""Profile one write-path cell with py-spy: ``python -m bench.profile_cell [--url URL] [...]``.

Runs one stream cell (``python -m bench.cell``, group commit by default) on a fresh database,
attaches ``py-spy record --threads --gil`` (samples of the thread holding the GIL) when its
measured window opens (after the warm-up's creates) for ``--seconds``, and prints a summary:
samples per thread, the top functions by their own samples and by inclusive samples, and the
write path's parts. The raw
collapsed stacks are kept (``--raw PATH``) for a flame graph. Needs ``py-spy`` on the PATH or
next to this Python (``pip install py-spy``; attaching needs ptrace rights). The figures:
BENCHMARKS.md, "CPU budget per delta".
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.cell import WINDOW_OPEN
from bench.spec import CellSpec, Strategy
from bench.write_path import ROOT, _Databases

__all__ = ["main", "summarize"]

# Inclusive shares worth naming: (label, the function "name (file)", or a package "folder/").
PARTS: tuple[tuple[str, str], ...] = (
    (
        "the driver loop (`_drive`, its update() calls included)",
        "_drive (messagestore/_demo/_workload.py)",
    ),
    ("MessageService.update", "update (messagestore/_messages.py)"),
    ("flusher tick on the loop (Writer._tick)", "_tick (messagestore/_writes/_writer.py)"),
    ("commit hook (Writer._committed)", "_committed (messagestore/_writes/_writer.py)"),
    ("feed publish (Feed.announce)", "announce (messagestore/_feed/_feed.py)"),
    (
        "group commit job (encode + statements)",
        "write_messages (messagestore/_database/_group_commit.py)",
    ),
    ("PostgreSQL write body (_write task)", "_write (messagestore/_database/_database.py)"),
    ("SQLAlchemy", "sqlalchemy/"),
    ("asyncpg", "asyncpg/"),
)

_LINE = re.compile(r":\d+\)$")
# Frames every sample of a thread passes through (the loop, the thread, the cell's entry):
# left out of the inclusive ranking.
_PLUMBING = ("(asyncio/", "(<frozen ", "(threading.py)", "(bench/", "<module> (")


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def _frame(frame: str) -> str:
    """``function (path:line)`` -> ``function (path)``, the path from ``messagestore/`` or
    ``site-packages/`` on."""
    frame = _LINE.sub(")", frame)
    for marker in ("site-packages/", "/messagestore/", "/bench/", "/pubsub/"):
        at = frame.find(marker)
        if at >= 0:
            head = frame[: frame.index("(") + 1]
            start = at + (len("site-packages/") if marker == "site-packages/" else 1)
            return head + frame[start:]
    return frame


def _matches(frame: str, needle: str) -> bool:
    """A frame is the function ``needle`` names (qualified or not), or lies in its folder."""
    if needle.endswith("/"):
        return f"({needle}" in frame
    return frame == needle or frame.endswith("." + needle)


def _stacks(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        path, _, count = line.rpartition(" ")
        stacks.append(([_frame(f) for f in path.split(";")], int(count)))
    return stacks


def summarize(lines: Iterable[str], top: int = 15) -> str:
    """A markdown summary of py-spy's raw (collapsed) output recorded with ``--threads``."""
    stacks = _stacks(lines)
    total = sum(count for _, count in stacks) or 1
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        threads[re.sub(r" \((0x)?[0-9a-fA-F]+\)", "", frames[0])] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            if not any(marker in frame for marker in _PLUMBING):
                inclusive[frame] += count

    def pct(count: int) -> str:
        return f"{100 * count / total:.1f} %"

    out = [f"{total} samples", "", "| thread | share |", "|---|---:|"]
    out += [f"| {name} | {pct(n)} |" for name, n in threads.most_common()]
    out += ["", "| part (inclusive) | share |", "|---|---:|"]
    for label, needle in PARTS:
        count = sum(n for frames, n in stacks if any(_matches(f, needle) for f in frames))
        out.append(f"| {label} | {pct(count)} |")
    out += ["", f"top {top} by own samples:", "", "| function | share |", "|---|---:|"]
    out += [f"| `{name}` | {pct(n)} |" for name, n in own.most_common(top)]
    out += ["", f"top {top} inclusive (the event loop, threads, bench frames left out):"]
    out += ["", "| function | share |", "|---|---:|"]
    out += [f"| `{name}` | {pct(n)} |" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_cell", description=__doc__)
    parser.add_argument("--url", default=None, help="as python -m bench --url (default SQLite)")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="sampled seconds (default 5)")
    parser.add_argument("--sample-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--strategy", default=Strategy.GROUP.value)
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw output here")
    parser.add_argument("--top", type=int, default=15)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    py_spy = _py_spy()
    databases = _Databases(args.url)
    try:
        with (
            databases.fresh("profile") as url,
            tempfile.TemporaryDirectory(prefix="msbench-profile-") as scratch,
        ):
            raw = args.raw or Path(scratch) / "raw.txt"
            spec = CellSpec(
                "stream",
                Strategy(args.strategy),
                url,
                streams=args.streams,
                rate=args.rate,
                duration=args.seconds + 2,  # py-spy takes a moment to attach
            )
            result = Path(scratch) / "result.json"
            command = [sys.executable, "-m", "bench.cell", spec.to_json(), str(result)]
            # No update() timing in a profiled cell: py-spy would see its clock reads.
            env = {**os.environ, "MSBENCH_CPU_SAMPLE_EVERY": "0"}
            cell = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
            try:
                assert cell.stdout is not None
                for line in cell.stdout:  # ends at the child's exit at the latest
                    if line.strip() == WINDOW_OPEN:
                        break
                else:
                    raise SystemExit(f"the cell ended before its window opened ({cell.wait()})")
                record = [
                    py_spy,
                    "record",
                    "--pid",
                    str(cell.pid),
                    "--duration",
                    f"{args.seconds:g}",
                    "--rate",
                    str(args.sample_rate),
                    "--threads",
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ]
                subprocess.run(record, check=True, capture_output=True, timeout=args.seconds + 60)
                cell.stdout.read()
                cell.wait(timeout=120 + 0.06 * args.streams)
            finally:
                if cell.poll() is None:
                    cell.kill()
                    cell.wait()
            print(f"py-spy {args.seconds:g} s inside the window of {' '.join(command[:3])} ")
            print(
                f"(strategy {args.strategy}, S={args.streams}, R={args.rate:g}), load average "
                f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} at the end\n"
            )
            print(summarize(raw.read_text().splitlines(), args.top))
    finally:
        databases.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
