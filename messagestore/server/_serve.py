"""``messagestore serve``: the store, the dispatcher and the app under uvicorn, and a clean stop.

The address must be loopback unless a token is given. The store opens (migrating); the
dispatcher runs the simulated agent with ``--demo``, else only takes input. uvicorn serves the
app with bounded connections (``_connections``) and streams; the open-file limit is raised to
fit. Ctrl-C or SIGTERM: streams end (``app.drain()``), uvicorn stops, the dispatcher closes,
the store closes (flushed); exit 130 after Ctrl-C, 0 after SIGTERM. In full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

import uvicorn

from .. import Store, open_store
from ..dispatch import Dispatcher
from ._app import (
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_STREAMS,
    MessageStoreApp,
    create_app,
)
from ._connections import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, http_protocol
from ._demo import DEFAULT_RATE, simulated_agent
from ._guard import LOOPBACK_HOSTS

__all__ = ["ServeOptions", "is_loopback", "serve"]

EXIT_INTERRUPTED = 130
_log = logging.getLogger("messagestore.server")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``messagestore serve`` takes."""

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    demo: bool = False
    demo_rate: float = DEFAULT_RATE
    cors_origins: Sequence[str] = field(default_factory=tuple)
    max_body: int = DEFAULT_MAX_BODY
    keepalive: float = DEFAULT_KEEPALIVE
    max_streams: int | None = DEFAULT_MAX_STREAMS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    log_level: str = "warning"


def is_loopback(host: str) -> bool:
    """True for an address that only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    """uvicorn's server with our stop: drain the app's streams at the first signal, and no
    re-raised signal afterwards (the caller closes the dispatcher and the store)."""

    def __init__(
        self, config: uvicorn.Config, app: MessageStoreApp, announce: Callable[[str], None]
    ) -> None:
        super().__init__(config)
        self._app = app
        self._announce = announce
        self.signals: list[int] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            except (RuntimeError, ValueError):  # not the main thread
                continue
            installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        del frame
        self.signals.append(sig)
        if self.should_exit:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._app.drain()
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    self._announce(_url(host, port))
                    return


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


_FILES_BESIDE_CONNECTIONS = 128
"""Open files a server needs besides its connections: the database, its pool, logs."""


def _room_for_connections(wanted: int, err: TextIO) -> int:
    """Raise the soft limit of open files so ``wanted`` connections fit (never above the hard
    limit); the number of connections that fit."""
    try:
        import resource  # Unix only
    except ImportError:  # pragma: no cover - no such limit here
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + _FILES_BESIDE_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    fits = max(1, soft - _FILES_BESIDE_CONNECTIONS)
    print(
        f"messagestore: the open-file limit ({soft}) holds {fits} connections; "
        f"--max-connections lowered from {wanted} to {fits}",
        file=err,
        flush=True,
    )
    return fits


def _make_dispatcher(store: Store, options: ServeOptions) -> Dispatcher:
    """The dispatcher the routes submit to (see the module docstring)."""
    if options.demo:
        return Dispatcher(store, simulated_agent(store, rate=options.demo_rate))

    async def elsewhere(turn: Any) -> None:  # never called: this dispatcher is not started
        raise RuntimeError("this server only takes input")

    return Dispatcher(store, elsewhere)


async def serve(options: ServeOptions, *, err: TextIO | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns the exit status (see the module
    docstring). Raises ``ValueError`` for options it refuses."""
    err = err if err is not None else sys.stderr
    if not is_loopback(options.host) and not options.token:
        raise ValueError(
            f"refusing to listen on {options.host}, which is not a loopback address, without "
            "--token (every request would be unauthenticated)"
        )
    if isinstance(options.max_connections, bool) or options.max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, not {options.max_connections!r}")
    if not options.header_timeout > 0:
        raise ValueError(f"header_timeout must be positive, not {options.header_timeout!r}")
    allowed_hosts = None if options.token else LOOPBACK_HOSTS
    store = await open_store(options.url)
    try:
        dispatcher = _make_dispatcher(store, options)
        app = create_app(
            store,
            dispatcher=dispatcher,
            token=options.token,
            cors_origins=options.cors_origins,
            allowed_hosts=allowed_hosts,
            max_body=options.max_body,
            keepalive=options.keepalive,
            max_streams=options.max_streams,
        )

        def announce(url: str) -> None:
            mode = "demo: a simulated agent answers" if options.demo else "input is queued"
            if options.token:
                print(f"messagestore: open {url}?token={options.token}", file=err, flush=True)
            print(f"messagestore: serving {url} ({mode}); Ctrl-C stops", file=err, flush=True)

        config = uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            log_level=options.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            server_header=False,
            http=http_protocol(options.header_timeout),
            ws="none",
            limit_concurrency=_room_for_connections(options.max_connections, err),
        )
        server = _Server(config, app, announce)
        if options.demo:
            await dispatcher.start()
        try:
            try:
                await server.serve()
            except SystemExit as exc:  # uvicorn exits when it cannot bind
                raise OSError(
                    f"could not listen on {options.host}:{options.port} (see the line above)"
                ) from exc
        finally:
            app.drain()
            if options.demo:
                await dispatcher.close()
    finally:
        await store.close()
    print("messagestore: stopped; everything is flushed", file=err, flush=True)
    return EXIT_INTERRUPTED if signal.SIGINT in server.signals else 0
