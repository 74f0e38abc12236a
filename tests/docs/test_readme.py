"""Every code block in README.md is executed here; a block this file cannot classify fails.

Block kinds (by fence language and content):

* FRESH MACHINE (``sh``, starts with ``python3 -m venv``): the two commands for a fresh machine.
  They must be exactly the test command ``.ci/run`` runs (CI greps the README for it and runs it
  in a fresh venv itself) and the demo command. Re-installing into a new venv here would take
  minutes and need the network, so the demo command's final step runs with the interpreter
  running these tests, with a short ``--duration``, on the embedded default location (redirected
  to a temporary directory through ``XDG_DATA_HOME``).
* ACTIVATE (``sh``, exactly ``. .venv/bin/activate``): the step that puts the fresh machine's
  environment (``messagestore``, ``python``, ``pip``) on ``PATH`` for every command after it;
  it must follow the fresh-machine commands and come before any block that needs it.
* PYTHON (``python``): run as a script in a subprocess, ``MESSAGESTORE_URL`` pointing at a
  temporary SQLite file; must exit 0 within the timeout.
* CLI (``sh``, every line a ``messagestore`` command or a shell assignment from one): run with
  ``bash -euo pipefail`` in a temporary directory, ``messagestore`` on ``PATH``,
  ``MESSAGESTORE_URL`` at a temporary SQLite file. ``messagestore demo`` runs with
  ``--duration 1`` to keep the suite fast (the only change made to a block).
* POSTGRES (``sh`` with a ``postgresql+asyncpg://`` URL): a CLI block whose URL is replaced by
  the test PostgreSQL database; skipped like every PostgreSQL test when no server answers.
* BENCH (``sh``, every line ``python -m bench...``): run from the repository root with the
  interpreter running these tests; ``python -m bench`` runs shrunk to one short cell per
  strategy (a full sweep takes minutes), ``bench.bench_server`` to 2 clients for half a second,
  and ``--json`` output must parse.
* SERVE (``sh``, every line ``messagestore serve ...``): each line runs as a server on a free
  port (``--port 0``) and a temporary SQLite file; the page and ``/api/sessions`` must answer
  (with the line's ``--token``), then Ctrl-C must stop it with status 130.
* WORKER (``sh``, every line ``messagestore worker ...``): each line runs as a worker on a
  temporary SQLite file until it says it runs, then Ctrl-C must stop it with status 130.
* FRONTEND (``tsx``): the React page of "Use it from the AI SDK". React and a bundler are not
  here, so it is checked for what the chat routes rely on (``useChat`` from ``@ai-sdk/react``,
  ``DefaultChatTransport`` from ``ai`` pointed at ``/api/chat`` of the served port,
  ``resume: true``); the transport itself runs against the server in
  ``tests/server/test_ai_sdk_chat.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import ROOT

README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
DEMO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/messagestore demo"
)
ACTIVATE = ". .venv/bin/activate"
TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    language: str
    code: str
    line: int

    @property
    def kind(self) -> str:
        lines = [ln for ln in self.code.splitlines() if ln.strip()]
        if self.language == "python":
            return "python"
        if self.language == "tsx":
            return "frontend"
        if self.language != "sh":
            return f"unknown language {self.language!r}"
        if all(ln.startswith("python3 -m venv ") for ln in lines):
            return "fresh-machine"
        if lines == [ACTIVATE]:
            return "activate"
        if all(ln.startswith("python -m bench") for ln in lines):
            return "bench"
        if all(ln.startswith("messagestore serve") for ln in lines):
            return "serve"
        if all(ln.startswith("messagestore worker") for ln in lines):
            return "worker"
        if "postgresql+asyncpg://" in self.code:
            return "postgres"
        if all(_is_cli_line(ln) for ln in lines):
            return "cli"
        return "unknown shell block"

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def _is_cli_line(line: str) -> bool:
    return line.startswith("messagestore ") or bool(re.match(r"\w+=\$\(messagestore ", line))


def readme_blocks() -> list[Block]:
    """The README's fenced blocks, in order."""
    blocks = []
    fence = re.compile(r"^```(\S*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
    text = README.read_text(encoding="utf-8")
    for match in fence.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match.group(1), match.group(2), line))
    return blocks


def _of_kind(kind: str) -> list[Block]:
    return [b for b in readme_blocks() if b.kind == kind]


def ci_test_command() -> str:
    """The test command ``.ci/run`` greps the README for and runs."""
    match = re.search(r"^TEST_COMMAND='(.*)'$", CI_SCRIPT.read_text(), re.MULTILINE)
    assert match, "TEST_COMMAND not found in .ci/run"
    return match.group(1)


def _env(tmp_path: Path, url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["MESSAGESTORE_URL"] = url or f"sqlite+aiosqlite:///{tmp_path / 'readme.db'}"
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    return env


# -- the blocks as a whole ----------------------------------------------------------------


def test_every_block_is_of_a_known_kind() -> None:
    blocks = readme_blocks()
    assert blocks, "no code blocks found"
    unknown = [f"{b}: {b.kind}" for b in blocks if b.kind.startswith("unknown")]
    assert unknown == []
    assert {b.kind for b in blocks} == {
        "fresh-machine",
        "activate",
        "python",
        "cli",
        "postgres",
        "bench",
        "serve",
        "worker",
        "frontend",
    }


def test_fresh_machine_commands_are_exactly_the_two(tmp_path: Path) -> None:
    commands = [ln for b in _of_kind("fresh-machine") for ln in b.code.splitlines() if ln]
    assert commands == [DEMO_COMMAND, ci_test_command()]
    # The demo command's last step, on the embedded default (see the module docstring).
    script = Path(sys.executable).parent / "messagestore"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "messagestore"]
    env = _env(tmp_path)
    del env["MESSAGESTORE_URL"]
    done = subprocess.run(
        [*program, "demo", "--duration", "1", "--sessions", "2"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    assert (tmp_path / "xdg-data" / "messagestore" / "messages.db").exists()


def test_the_environment_is_activated_before_any_command_needs_it() -> None:
    """The fresh-machine commands call ``.venv/bin/...`` by path; every later shell block calls
    ``messagestore``, ``python`` or ``pip`` by name, which the activation puts on PATH."""
    kinds = [b.kind for b in readme_blocks() if b.language == "sh"]
    assert kinds.count("activate") == 1
    activation = kinds.index("activate")
    assert set(kinds[:activation]) == {"fresh-machine"}
    assert "fresh-machine" not in kinds[activation:]


def test_quickstart_is_short() -> None:
    quickstart = _of_kind("python")[0]
    assert len([ln for ln in quickstart.code.splitlines() if ln.strip()]) <= 25


# -- each block -----------------------------------------------------------------------------


@pytest.mark.parametrize("block", _of_kind("python"), ids=str)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "a README example should show something"
    assert done.stderr == ""


def _run_shell(block: Block, tmp_path: Path, env: dict[str, str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "messagestore"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m messagestore "$@"\n')
    wrapper.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    code = re.sub(r"--duration \S+", "--duration 1", block.code)
    code = re.sub(r"\bmessagestore demo(?!.*--duration)", "messagestore demo --duration 1", code)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("block", _of_kind("cli"), ids=str)
def test_cli_block_runs(block: Block, tmp_path: Path) -> None:
    _run_shell(block, tmp_path, _env(tmp_path))
    if "-o chat.md" in block.code:
        assert (tmp_path / "chat.md").read_text(encoding="utf-8").startswith("# ")


@pytest.mark.postgres
@pytest.mark.parametrize("block", _of_kind("postgres"), ids=str)
def test_postgres_block_runs(block: Block, postgres_url: str, tmp_path: Path) -> None:
    code = re.sub(r"postgresql\+asyncpg://\S+", postgres_url, block.code)
    _run_shell(Block(block.language, code, block.line), tmp_path, _env(tmp_path, postgres_url))


_SHRINK_BENCH = {
    "bench": ["--streams", "2", "--duration", "0.5", "--flush-messages", "0"],
    "bench.bench_server": ["--clients", "2", "--seconds", "0.5"],
}


@pytest.mark.parametrize("block", _of_kind("bench"), ids=str)
def test_bench_block_runs(block: Block) -> None:
    for line in block.code.splitlines():
        args = shlex.split(line, comments=True)
        if not args:
            continue
        assert args[:2] == ["python", "-m"]
        args += _SHRINK_BENCH.get(args[2], [])
        done = subprocess.run(
            [sys.executable, *args[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        if "--json" in args:
            json.loads(done.stdout)


@pytest.mark.parametrize("block", _of_kind("serve"), ids=str)
def test_serve_block_runs(block: Block, tmp_path: Path) -> None:
    import signal

    import httpx

    from tests.support.server_helpers import ServerProcess

    for line in block.code.splitlines():
        args = shlex.split(line, comments=True)
        if not args:
            continue
        assert args[:2] == ["messagestore", "serve"]
        headers = {}
        if "--token" in args:
            headers["authorization"] = "Bearer " + args[args.index("--token") + 1]
        url = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
        server = ServerProcess(url, *args[2:])
        server.start()
        try:
            for path in ("/", "/api/sessions"):
                response = httpx.get(server.url + path, headers=headers, timeout=30)
                assert response.status_code == 200, (line, path, response.text)
            server.signal(signal.SIGINT)
            code, stderr = server.wait(60)
            assert code == 130, stderr
        finally:
            server.stop()


@pytest.mark.parametrize("block", _of_kind("worker"), ids=str)
def test_worker_block_runs(block: Block, tmp_path: Path) -> None:
    import signal

    from tests.support.chat_helpers import WorkerProcess
    from tests.support.processes import Processes

    owner = Processes()
    try:
        for line in block.code.splitlines():
            args = shlex.split(line, comments=True)
            if not args:
                continue
            assert args[:2] == ["messagestore", "worker"]
            url = f"sqlite+aiosqlite:///{tmp_path / 'worker.db'}"
            worker = WorkerProcess(url, *args[2:], owner=owner).start()
            assert worker.process is not None
            worker.process.send_signal(signal.SIGINT)
            code, stderr = worker.wait(60)
            assert code == 130, stderr
    finally:
        import asyncio

        asyncio.run(owner.close())


@pytest.mark.parametrize("block", _of_kind("frontend"), ids=str)
def test_frontend_block_uses_the_chat_routes(block: Block) -> None:
    code = block.code
    assert "import { useChat } from '@ai-sdk/react';" in code
    assert "import { DefaultChatTransport } from 'ai';" in code
    api = re.search(
        r"DefaultChatTransport\(\{ api: '(http://127\.0\.0\.1:(\d+))/api/chat' \}\)", code
    )
    assert api is not None, "the transport must point at /api/chat of the server"
    assert "resume: true" in code
    # The port is the one `messagestore serve` listens on by default, and the origin the page
    # is served from is the one the README's serve line allows.
    assert api.group(2) == "8000"
    serve_lines = [ln for b in _of_kind("serve") for ln in b.code.splitlines()]
    assert any("--cors-origin http://localhost:3000" in ln for ln in serve_lines)
