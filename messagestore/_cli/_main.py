"""The ``messagestore`` command: argument parsing, dispatch and the error contract.

Exit status: 0 success; 1 an error, printed as ONE line ``messagestore: error: ...`` on stderr
(bad URL, missing database or session, unreachable server, database of a newer schema, failed
verification); 2 a usage error (argparse); 130 interrupted (Ctrl-C). ``--debug`` prints the
traceback of an error as well.

Every command takes ``--url`` (default: ``MESSAGESTORE_URL``, else the embedded SQLite file, as
``open_store()`` resolves it), before or after the command name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

from .. import default_database_path
from ..dispatch import DropPolicy, QueueMode
from ._common import Target, describe_error, resolve_target
from ._db import db_current, db_history, db_upgrade
from ._demo import EXIT_INTERRUPTED, DemoOptions, run_demo
from ._inspect import export_session, list_sessions, show_session
from ._serve import add_serve_parser, run_serve
from ._watch import watch
from ._worker import add_worker_parser, run_worker

__all__ = ["build_parser", "main"]

PROG = "messagestore"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, not {value}")
    return value


def _revision(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a revision (0 or more), not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or a positive number, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    defaults = DemoOptions()
    # --url and --debug are accepted before and after the command; SUPPRESS keeps a
    # subcommand's unset option from overwriting the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"database URL (default: $MESSAGESTORE_URL, else {default_database_path()})",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Persist streaming agent-conversation messages: demo, inspect, watch, serve, "
        "work, migrate.",
        epilog="exit status: 0 success, 1 error (one line; --debug adds the traceback), "
        "2 usage error, 130 interrupted",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="stream simulated agent sessions into the store and report what it did",
        description="Simulated agents stream replies into the store while a subscriber plays "
        "the UI; ends with a report. Ctrl-C stops early, flushes and reports (exit 130).",
    )
    demo.add_argument(
        "--sessions",
        type=_positive_int,
        default=defaults.sessions,
        help="concurrent agent sessions (default %(default)s)",
    )
    demo.add_argument(
        "--duration",
        type=_positive_float,
        default=defaults.duration,
        help="seconds of streaming (default %(default)s)",
    )
    demo.add_argument(
        "--rate",
        type=_positive_float,
        default=defaults.rate,
        help="tokens per second per session (default %(default)s)",
    )
    demo.add_argument(
        "--debounce",
        type=_non_negative_float,
        default=defaults.debounce,
        help="write window in seconds; 0 writes every delta at once (default %(default)s)",
    )
    demo.add_argument(
        "--seed", type=int, default=defaults.seed, help="workload seed (default %(default)s)"
    )
    demo.add_argument(
        "--ui-delay",
        type=_non_negative_float,
        default=defaults.ui_delay,
        help="seconds the simulated UI spends per event; a slow UI shows conflation "
        "(default %(default)s)",
    )
    demo.add_argument("--json", action="store_true", help="print only the report, as JSON")
    demo.add_argument(
        "--users",
        type=_non_negative_int,
        default=defaults.users,
        help="simulated users sending bursts of messages through the dispatcher to a toy "
        "agent (default %(default)s: none)",
    )
    demo.add_argument(
        "--queue-mode",
        choices=[m.value for m in QueueMode],
        default=defaults.queue_mode,
        help="what input arriving during a turn does (default %(default)s)",
    )
    demo.add_argument(
        "--window",
        type=_non_negative_float,
        default=defaults.window,
        help="the dispatcher's coalescing window in seconds (default %(default)s)",
    )
    demo.add_argument(
        "--cap",
        type=_positive_int,
        default=defaults.cap,
        help="most pending inputs per session (default %(default)s)",
    )
    demo.add_argument(
        "--drop",
        choices=[p.value for p in DropPolicy],
        default=defaults.drop,
        help="what the cap drops (default %(default)s)",
    )

    sessions = commands.add_parser("sessions", parents=[common], help="list sessions, newest first")
    sessions.add_argument("-q", "--quiet", action="store_true", help="print only session ids")

    show = commands.add_parser(
        "show", parents=[common], help="render every message and part of a session"
    )
    show.add_argument("session", metavar="SESSION", help="session id or a unique prefix of one")

    export = commands.add_parser(
        "export", parents=[common], help="write a session as JSON or Markdown"
    )
    export.add_argument("session", metavar="SESSION", help="session id or a unique prefix of one")
    export.add_argument(
        "--format",
        choices=("json", "markdown"),
        default="json",
        help="json (machine-readable, every part with its type) or markdown (default json)",
    )
    export.add_argument(
        "-o", "--output", type=Path, default=None, help="write to this file instead of stdout"
    )

    add_serve_parser(commands, common)
    add_worker_parser(commands, common)
    watch_ = commands.add_parser(
        "watch",
        parents=[common],
        help="print every message change as it is committed, by any process",
        description="Tail the change feed: one line per message event (revision, type, "
        "session, message, role, preview), live, from every process writing to the "
        "database. Ctrl-C stops (exit 130), SIGTERM too (exit 0).",
    )
    watch_.add_argument(
        "--session", metavar="ID", default=None, help="only this session (an id or unique prefix)"
    )
    watch_.add_argument(
        "--since",
        metavar="REV",
        type=_revision,
        default=None,
        help="first replay what changed after revision REV (default: from now on)",
    )
    watch_.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: messages as `export`, later changes as deltas",
    )
    watch_.add_argument(
        "--whole",
        action="store_true",
        help="print every change whole (default: a later change of a message shows only "
        "what changed, as a `delta` line)",
    )

    db = commands.add_parser(
        "db", parents=[common], help="schema migrations: upgrade, current, history"
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser(
        "upgrade", parents=[common], help="migrate the database to the newest revision"
    )
    db_commands.add_parser("current", parents=[common], help="print the database's revision")
    db_commands.add_parser(
        "history", parents=[common], help="list the migrations this version ships"
    )
    return parser


def _version() -> str:
    try:
        return version("messagestore")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# -- dispatch -----------------------------------------------------------------------------


def _command(args: argparse.Namespace, out: TextIO) -> Callable[[], Coroutine[Any, Any, int]]:
    """The coroutine function that runs the parsed command (URL errors raise here)."""
    if args.command == "db" and args.db_command == "history":

        async def history() -> int:
            db_history(out)
            return 0

        return history
    target = resolve_target(args.url)

    async def run() -> int:
        match args.command:
            case "demo":
                options = DemoOptions(
                    sessions=args.sessions,
                    duration=args.duration,
                    rate=args.rate,
                    debounce=args.debounce,
                    seed=args.seed,
                    ui_delay=args.ui_delay,
                    json=args.json,
                    users=args.users,
                    queue_mode=args.queue_mode,
                    window=args.window,
                    cap=args.cap,
                    drop=args.drop,
                )
                return await run_demo(target, options, out)
            case "sessions":
                await list_sessions(target, out, quiet=args.quiet)
            case "show":
                await show_session(target, args.session, out)
            case "export":
                await _export(target, args, out)
            case "serve":
                return await run_serve(target, args, sys.stderr)
            case "worker":
                status = await run_worker(target, args, sys.stderr)
                if status == EXIT_INTERRUPTED:
                    print(f"{PROG}: interrupted", file=sys.stderr)
                return status
            case "watch":
                status = await watch(
                    target,
                    out,
                    session=args.session,
                    since=args.since,
                    as_json=args.json,
                    whole=args.whole,
                )
                if status == EXIT_INTERRUPTED:
                    print(f"{PROG}: interrupted", file=sys.stderr)
                return status
            case "db" if args.db_command == "upgrade":
                await db_upgrade(target, out)
            case "db":
                await db_current(target, out)
        return 0

    return run


async def _export(target: Target, args: argparse.Namespace, out: TextIO) -> None:
    if args.output is None:
        await export_session(target, args.session, args.format, out)
        return
    with args.output.open("w", encoding="utf-8") as file:
        await export_session(target, args.session, args.format, file)
    print(f"wrote {args.output}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    # Not parser defaults: parents share action objects, and a default set on the main
    # parser would leak into every subcommand and overwrite what was given before it.
    args.url = getattr(args, "url", None)
    args.debug = getattr(args, "debug", False)
    out = sys.stdout
    try:
        return asyncio.run(_command(args, out)())
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`messagestore sessions -q | head -n 1`): it has what it
        # wanted. Stop quietly; stdout goes to devnull so the final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except asyncio.CancelledError:  # a second Ctrl-C during the demo
        print(f"{PROG}: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {describe_error(exc, debug=args.debug)}", file=sys.stderr)
        return 1
