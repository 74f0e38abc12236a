"""Helpers of the HTTP service's tests: an SSE reader, an in-process uvicorn server, a server
in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from tests.support.paths import ROOT
from tests.support.processes import Processes


@dataclass
class SSEEvent:
    """One dispatched Server-Sent Event (or a comment, with ``comment`` set)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None
    retry: int | None = None


@dataclass
class SSEReader:
    """Parses an SSE byte stream as the WHATWG spec does (``id:``-only blocks update the last
    event id without dispatching)."""

    last_event_id: str | None = None
    _buffer: str = ""
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _retry: int | None = None

    def feed(self, text: str) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        self._buffer += text
        while True:
            match = re.search(r"\r\n|\r|\n", self._buffer)
            if match is None:
                return out
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            if line == "":
                if self._id is not None:
                    self.last_event_id = self._id
                if self._data:
                    out.append(
                        SSEEvent(
                            self._event or "message",
                            "\n".join(self._data),
                            self.last_event_id,
                            retry=self._retry,
                        )
                    )
                self._event, self._data, self._id, self._retry = "", [], None, None
                continue
            if line.startswith(":"):
                out.append(SSEEvent(event="", comment=line[1:].strip()))
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            elif name == "id":
                self._id = value
            elif name == "retry" and value.isdigit():
                self._retry = int(value)


async def sse_events(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[SSEReader, SSEEvent]]:
    """Stream ``url`` and yield (reader, event) for each event and comment."""
    reader = SSEReader()
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for text in response.aiter_text():
            for event in reader.feed(text):
                yield reader, event


class InProcessServer(uvicorn.Server):
    """uvicorn on the test's own event loop (port 0), for streaming routes: httpx's ASGI
    transport buffers whole responses, so streams are read over a real socket."""

    def __init__(self, app: Any) -> None:
        super().__init__(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self.ready = asyncio.Event()
        self.url = ""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        port = self.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.ready.set()


@contextlib.asynccontextmanager
async def serving(app: Any, *, send_buffer: int | None = None) -> AsyncIterator[InProcessServer]:
    """Run ``app`` under uvicorn in this loop until the block ends.

    ``send_buffer``: the kernel's send buffer of every connection, in bytes (``SO_SNDBUF``,
    which also stops the kernel from growing it): with a small one a client that stops
    reading makes the server wait for it after a few frames, not after megabytes.
    """
    server = InProcessServer(app)
    sockets = None
    if send_buffer is not None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # inherited
        listener.bind(("127.0.0.1", 0))
        sockets = [listener]
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        async with asyncio.timeout(10):
            await server.ready.wait()
        yield server
    finally:
        app.drain()
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


class ServerProcess:
    """``messagestore serve`` in a subprocess on a free port; ``url`` once it listens.

    A thread reads its stderr line by line (``stderr_lines``), so nothing waits on a pipe that
    a buffered reader has already drained. ``owner`` (the ``processes`` fixture) ends the
    process after the test whatever happened; without one (a module-scoped fixture) use it as
    a context manager, which stops it on the way out.
    """

    def __init__(
        self,
        db_url: str,
        *args: str,
        env: dict[str, str] | None = None,
        owner: Processes | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "messagestore",
            "--url",
            db_url,
            "serve",
            *args,
            "--port",
            "0",
        ]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.owner = owner
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self.preexec_fn,
        )
        if self.owner is not None:
            self.owner.adopt(self.process)
        stderr = self.process.stderr
        assert stderr is not None

        def read() -> None:
            for line in stderr:
                self._lines.put(line)
            self._lines.put(None)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self.url:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"server did not start: {self.stderr_lines}") from None
            if line is None:
                self.process.wait(10)
                raise AssertionError(f"server exited: {self.stderr_lines}")
            self.stderr_lines.append(line)
            match = re.search(r"serving (http://\S+/)", line)
            if match:
                self.url = match.group(1).rstrip("/")
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the process to exit; its status and everything it wrote to stderr."""
        assert self.process is not None
        code = self.process.wait(timeout)
        self._drain()
        return code, "".join(self.stderr_lines)

    def _drain(self) -> None:
        if self._reader is not None:
            self._reader.join(10)
            if not self._reader.is_alive() and self.process and self.process.stderr:
                self.process.stderr.close()
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.stderr_lines.append(line)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._drain()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
