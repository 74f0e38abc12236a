"""``messagestore serve``: the HTTP service (``messagestore.server``), imported only when the
command runs, so the rest of the command line works without the ``server`` extra."""

from __future__ import annotations

import argparse
from typing import TextIO

from ._common import CliError, Target, connect_check

__all__ = ["add_serve_parser", "run_serve"]


def add_serve_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="the HTTP service: REST, live events, the AI SDK stream and a web view",
        description="Serve the store over HTTP: REST, Server-Sent Events, the Vercel AI SDK UI "
        "message stream and a live web view at /. Binds 127.0.0.1; any other address needs "
        "--token. Ctrl-C ends open streams, flushes and exits (130).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default %(default)s)"
    )
    serve.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every route (needed off loopback); "
        "the page takes it once as /?token=TOKEN",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="run the dispatcher with a simulated agent that answers every input",
    )
    serve.add_argument(
        "--demo-rate",
        type=float,
        default=20.0,
        help="words per second the simulated agent streams (default %(default)s)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this origin by CORS (repeatable; default: CORS off)",
    )
    serve.add_argument(
        "--max-body",
        type=int,
        default=4 * 1024 * 1024,
        help="largest request body in bytes (default %(default)s)",
    )
    serve.add_argument(
        "--keepalive",
        type=float,
        default=15.0,
        help="seconds between keep-alive comments on idle streams (default %(default)s)",
    )
    serve.add_argument(
        "--max-streams",
        type=int,
        default=1000,
        help="event and UI streams served at once; past it 503 (default %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=2048,
        help="connections and requests in progress at once; past it 503 (default %(default)s)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send a complete request head (default %(default)s)",
    )


async def run_serve(target: Target, args: argparse.Namespace, err: TextIO) -> int:
    try:
        from ..server import ServeOptions, serve
    except ImportError as exc:
        raise CliError(
            f"the HTTP service needs the server extra ({exc.name} is missing): "
            "pip install 'messagestore[server]'"
        ) from None
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0 to 65535, not {args.port}")
    if not args.demo_rate > 0:
        raise CliError(f"--demo-rate must be positive, not {args.demo_rate}")
    if not args.keepalive > 0:
        raise CliError(f"--keepalive must be positive, not {args.keepalive}")
    if args.max_streams < 1:
        raise CliError(f"--max-streams must be at least 1, not {args.max_streams}")
    if args.max_connections < 1:
        raise CliError(f"--max-connections must be at least 1, not {args.max_connections}")
    if not 0 < args.header_timeout < float("inf"):
        raise CliError(f"--header-timeout must be positive, not {args.header_timeout}")
    await connect_check(target)
    options = ServeOptions(
        url=target.url,
        host=args.host,
        port=args.port,
        token=args.token,
        demo=args.demo,
        demo_rate=args.demo_rate,
        cors_origins=tuple(args.cors_origin),
        max_body=args.max_body,
        keepalive=args.keepalive,
        max_streams=args.max_streams,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        log_level="debug" if args.debug else "warning",
    )
    return await serve(options, err=err)
