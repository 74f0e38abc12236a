"""The OS processes a test starts, owned so that none outlives it.

A process left running by a failed or timed-out test keeps its database connections (a
PostgreSQL scratch database then cannot be reset, and later tests fail for it), its port and
its files. :class:`Processes` (the ``processes`` fixture of ``tests/conftest.py``) starts them,
tracks them, and on teardown — whatever the test did — sends SIGTERM to each one still running,
waits up to ``grace`` seconds, sends SIGKILL to what is left and waits for it to exit. A process
started in a session of its own (``start_new_session=True``: a shell pipeline) is ended with
its whole process group, grandchildren included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import Any

__all__ = ["Processes"]


class Processes:
    """Starts and owns OS processes (see the module docstring)."""

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self._popen: list[subprocess.Popen[Any]] = []
        self._asyncio: list[asyncio.subprocess.Process] = []
        self._groups: list[int] = []  # leaders of process groups of their own

    def popen(self, args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(args, **kwargs)``, owned."""
        process = self.adopt(subprocess.Popen(args, **kwargs))
        if kwargs.get("start_new_session"):
            self._groups.append(process.pid)
        return process

    async def exec(self, program: str, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """``asyncio.create_subprocess_exec(program, *args, **kwargs)``, owned."""
        process = await asyncio.create_subprocess_exec(program, *args, **kwargs)
        self._asyncio.append(process)
        if kwargs.get("start_new_session"):
            self._groups.append(process.pid)
        return process

    def adopt(self, process: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Own a process something else started (a helper's ``Popen``)."""
        self._popen.append(process)
        return process

    def run(self, args: Any, *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Like ``subprocess.run(args, capture_output=True)``: the process is killed (and
        waited for) if it outlives ``timeout``, which then raises ``TimeoutExpired``."""
        process = self.popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    async def close(self) -> None:
        """End every process still running (SIGTERM, the grace, SIGKILL) and wait for it."""
        popen, self._popen = self._popen, []
        spawned, self._asyncio = self._asyncio, []
        groups, self._groups = self._groups, []
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        for process in popen:
            if process.poll() is None:
                _signal(process.pid, signal.SIGTERM)
        for aprocess in spawned:
            if aprocess.returncode is None:
                _signal(aprocess.pid, signal.SIGTERM)
        await asyncio.gather(
            *(asyncio.to_thread(_end_popen, p, self.grace) for p in popen),
            *(_end_spawned(p, self.grace) for p in spawned),
        )
        await asyncio.gather(*(_end_group(g, self.grace) for g in groups))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(group: int, signum: int) -> bool:
    """Signal every process of the group; False when none is left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


async def _end_group(group: int, grace: float) -> None:
    """The group's other members (not our children: nothing to reap) get the grace to exit
    after SIGTERM, then SIGKILL."""
    deadline = asyncio.get_running_loop().time() + grace
    while _signal_group(group, 0):
        if asyncio.get_running_loop().time() > deadline:
            _signal_group(group, signal.SIGKILL)
            return
        await asyncio.sleep(0.05)


def _end_popen(process: subprocess.Popen[Any], grace: float) -> None:
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


async def _end_spawned(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is None:
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            _signal(process.pid, signal.SIGKILL)
            await process.wait()  # SIGKILL cannot be ignored
    if process.stdin is not None:
        process.stdin.close()
