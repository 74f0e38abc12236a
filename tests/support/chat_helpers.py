"""Helpers of the chat routes' process tests: ``messagestore worker`` in a subprocess, and
reading a UI message stream over HTTP."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.paths import ROOT
from tests.support.processes import Processes

__all__ = ["WorkerProcess", "chat_body", "ui_chunks"]


class WorkerProcess:
    """``messagestore worker ARGS`` in a subprocess, owned by ``owner`` (the ``processes``
    fixture); ``start()`` returns once it says it runs. A thread reads its stderr line by line
    (``stderr_lines``)."""

    def __init__(
        self,
        db_url: str,
        *args: str,
        owner: Processes,
        cwd: str | os.PathLike[str] = ROOT,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.command = [sys.executable, "-m", "messagestore", "--url", db_url, "worker", *args]
        self.owner = owner
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        self.process = self.owner.popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self.preexec_fn,
        )
        stderr = self.process.stderr
        assert stderr is not None

        def read() -> None:
            for line in stderr:
                self._lines.put(line)
            self._lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline)
            if line is None:
                raise AssertionError(f"worker exited or hung: {self.stderr_lines}")
            if "worker running" in line:
                return self

    def _next(self, deadline: float) -> str | None:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is not None:
            self.stderr_lines.append(line)
        return line

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the process to exit; its status and everything it wrote to stderr."""
        assert self.process is not None
        code = self.process.wait(timeout)
        deadline = time.monotonic() + 10
        while self._next(deadline) is not None:
            pass
        return code, "".join(self.stderr_lines)


def chat_body(
    chat_id: str,
    text: str,
    *,
    user_id: str = "ui-user-1",
    trigger: str = "submit-message",
    message_id: str | None = None,
) -> dict[str, Any]:
    """A body as the AI SDK's ``DefaultChatTransport`` sends it."""
    return {
        "id": chat_id,
        "messages": [{"id": user_id, "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": trigger,
        "messageId": message_id,
    }


async def ui_chunks(
    response: httpx.Response, *, stop: Callable[[Any], bool] | None = None
) -> list[Any]:
    """The decoded ``data:`` payloads of a UI message stream (``"[DONE]"`` as the string),
    until it ends, or until ``stop(chunk)`` is true for one (the chunks so far, that one
    included)."""
    assert response.status_code == 200, await response.aread()
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    out: list[Any] = []
    buffer = ""
    async for piece in response.aiter_text():
        buffer += piece
        *blocks, buffer = buffer.split("\n\n")
        for block in blocks:
            for line in block.split("\n"):
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                chunk = data if data == "[DONE]" else json.loads(data)
                out.append(chunk)
                if stop is not None and stop(chunk):
                    return out
    return out
