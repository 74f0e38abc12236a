"""The adapters sit behind extras: ``import messagestore`` imports neither SDK.

Checked in a fresh interpreter, where nothing else has imported them yet.
"""

from __future__ import annotations

import subprocess
import sys

SDK_MODULES = ("agents", "openai", "langchain_core", "pydantic")


def _imported_after(statement: str) -> list[str]:
    check = (
        f"{statement}\n"
        "import sys\n"
        f"print(' '.join(m for m in {SDK_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def test_import_messagestore_imports_no_sdk() -> None:
    assert _imported_after("import messagestore, messagestore.adapters") == []


def test_each_adapter_imports_only_its_sdk() -> None:
    agents_side = _imported_after("import messagestore.adapters.openai_agents")
    assert "agents" in agents_side
    assert "langchain_core" not in agents_side
    langchain_side = _imported_after("import messagestore.adapters.langchain")
    assert "langchain_core" in langchain_side
    assert "agents" not in langchain_side
