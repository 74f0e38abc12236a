"""The SDKs' own tests of their built-in sessions, run against our adapters.

The adapters claim to speak their SDK's protocol exactly, so the SDK's own tests must agree:
its tests for the built-in session (the OpenAI Agents SDK's ``SQLiteSession``, langchain-core's
``InMemoryChatMessageHistory``) are run with only the constructor swapped for one that returns
our adapter on a fresh store (``support/sdk_openai_swap.py``,
``support/sdk_langchain_swap.py``), in a pytest subprocess. Whatever they assert, ours does;
the only tests skipped are those of the built-in session's own internals, each listed with its
reason in the plugin.

The SDK's test files are not part of this repository: they come from the source distribution
of the installed version on PyPI (``pip download --no-binary :all:``), extracted once into
``~/.cache/messagestore-ci/sdk-suites`` (``$XDG_CACHE_HOME`` when set). Offline, these tests
skip, saying so, unless ``MESSAGESTORE_REQUIRE_SDK_SUITES=1`` makes that a failure (CI sets it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("agents")
pytest.importorskip("langchain_core")

from tests.support.paths import SUPPORT
from tests.support.sdk_langchain_swap import IN_MEMORY_ONLY
from tests.support.sdk_openai_swap import SQLITE_INTERNALS

CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "messagestore-ci"
    / "sdk-suites"
)
REQUIRE = os.environ.get("MESSAGESTORE_REQUIRE_SDK_SUITES") == "1"
DOWNLOAD_TIMEOUT = 300
RUN_TIMEOUT = 600

OPENAI_FILES = [
    "tests/memory/test_session.py",
    "tests/memory/test_session_limit.py",
    # The runner's tests: the plugin keeps those that construct a SQLiteSession.
    "tests/test_agent_runner.py",
    "tests/test_agent_runner_streamed.py",
    "tests/test_max_turns.py",
    "tests/test_soft_cancel.py",
]
LANGCHAIN_FILES = [
    "tests/unit_tests/chat_history/test_chat_history.py",
    "tests/unit_tests/runnables/test_history.py",
]


def sdk_source(distribution: str) -> Path:
    """The root of the extracted sdist of the installed ``distribution`` (its ``tests/`` and
    ``pyproject.toml``), downloaded once per version."""
    version = metadata.version(distribution)
    root = CACHE / f"{distribution}-{version}"
    if (root / "pyproject.toml").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    *("-m", "pip", "download", "--no-binary", ":all:", "--no-deps"),
                    *("--quiet", "-d", scratch),
                    f"{distribution}=={version}",
                ],
                capture_output=True,
                text=True,
                timeout=DOWNLOAD_TIMEOUT,
            )
            failure = done.stderr.strip()[-600:] if done.returncode else ""
        except subprocess.TimeoutExpired:
            failure = f"no answer within {DOWNLOAD_TIMEOUT} s"
        archives = list(Path(scratch).glob("*.tar.gz"))
        if failure or len(archives) != 1:
            message = (
                f"could not download the source distribution of {distribution}=={version} "
                f"from PyPI (offline?): {failure or [a.name for a in archives]}"
            )
            if REQUIRE:
                pytest.fail(message)
            pytest.skip(message + "; MESSAGESTORE_REQUIRE_SDK_SUITES=1 makes this a failure")
        extracted = Path(scratch) / "extracted"
        with tarfile.open(archives[0]) as archive:
            wanted = [
                member
                for member in archive.getmembers()
                if member.name.count("/") >= 1
                and member.name.split("/", 1)[1].split("/")[0] in ("tests", "pyproject.toml")
            ]
            archive.extractall(extracted, members=wanted, filter="data")
        (top,) = extracted.iterdir()
        try:
            top.rename(root)  # atomic: a concurrent run that won the race keeps its copy
        except OSError:
            if not (root / "pyproject.toml").is_file():
                raise
    return root


def run_suite(
    root: Path, plugin: str, files: list[str], tmp_path: Path, *extra: str
) -> tuple[dict[str, str], str]:
    """Run the SDK's ``files`` with ``plugin`` loaded; each test's outcome by name, and the
    output (for failure messages)."""
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    try:
        done = subprocess.run(
            [
                sys.executable,
                *("-m", "pytest", "-p", plugin, "-p", "no:cacheprovider", "-q", "--tb=short"),
                f"--junitxml={report}",
                *extra,
                *files,
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the SDK's suite did not finish within {RUN_TIMEOUT} s:\n{exc.stdout!r}")
    output = done.stdout[-20000:] + done.stderr[-5000:]
    assert report.is_file(), output
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = (
            "failed"
            if kinds & {"failure", "error"}
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
    assert done.returncode == 0, output
    return outcomes, output


def _base(name: str) -> str:
    return name.rsplit("::", 1)[1].split("[", 1)[0]


def test_the_openai_agents_sdk_session_tests_pass_on_message_store_session(
    tmp_path: Path,
) -> None:
    root = sdk_source("openai-agents")
    outcomes, output = run_suite(root, "sdk_openai_swap", OPENAI_FILES, tmp_path)
    failed = [name for name, outcome in outcomes.items() if outcome == "failed"]
    assert failed == [], output
    skipped = {_base(name) for name, outcome in outcomes.items() if outcome == "skipped"}
    assert skipped == set(SQLITE_INTERNALS), "only SQLite internals are skipped"
    session_tests = [n for n, o in outcomes.items() if o == "passed" and "memory" in n]
    assert len(session_tests) >= 40, output
    print(f"openai-agents {metadata.version('openai-agents')}: {len(outcomes)} tests, ", end="")
    print(f"{sum(o == 'passed' for o in outcomes.values())} passed, {len(skipped)} skipped")


def test_langchain_core_chat_history_tests_pass_on_message_store_history(
    tmp_path: Path,
) -> None:
    root = sdk_source("langchain-core")
    outcomes, output = run_suite(
        root,
        "sdk_langchain_swap",
        LANGCHAIN_FILES,
        tmp_path,
        # Its own conftest needs test-only packages (blockbuster, pytest-mock) and its
        # addopts a snapshot plugin; neither concerns a chat history.
        "--noconftest",
        "-o",
        "addopts=",
    )
    failed = [name for name, outcome in outcomes.items() if outcome == "failed"]
    assert failed == [], output
    skipped = {_base(name) for name, outcome in outcomes.items() if outcome == "skipped"}
    assert skipped == set(IN_MEMORY_ONLY), "only in-memory specifics are skipped"
    assert sum(o == "passed" for o in outcomes.values()) >= 20, output


def test_a_cached_source_is_reused(tmp_path: Path) -> None:
    """The second call finds the extracted copy and downloads nothing."""
    root = sdk_source("openai-agents")
    assert sdk_source("openai-agents") == root
    assert (root / "tests" / "memory" / "test_session.py").is_file()
