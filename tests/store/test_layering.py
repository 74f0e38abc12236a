"""The package's layers, checked on the source (``ast``), so that the arrows stay as drawn.

* The faces — the HTTP server, the command line, the adapters, the blocking twin, telemetry,
  the demo — are built on the public store API only: names in ``messagestore.__all__``,
  public modules (no path component starting with ``_``: ``messagestore.dispatch``,
  ``messagestore.wire``, ``messagestore.migrations``, ``messagestore.sync``, ...), their own
  modules, and another face only through its package or public module. Never a private core
  module (``messagestore._database``, ``._writes``, ``._feed``, ``._store``, ``._model``,
  ``._errors``, ``._dispatch``, ...).
* The core never imports a face: imports only point down.
* ``pubsub`` never imports ``messagestore``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import messagestore
from tests.support.paths import ROOT

PACKAGE = "messagestore"

FACES: dict[str, tuple[str, ...]] = {
    "server": ("messagestore.server",),
    "command line": ("messagestore._cli", "messagestore.__main__"),
    "adapters": ("messagestore.adapters",),
    "blocking twin": ("messagestore._sync", "messagestore.sync"),
    "telemetry": ("messagestore._telemetry", "messagestore.telemetry"),
    "demo": ("messagestore._demo",),
}
"""Each face: its packages and modules (the first is its package, its interface to others)."""


@dataclass(frozen=True)
class Import:
    """One imported module, and the names taken from it (empty for ``import x``)."""

    source: Path
    line: int
    module: str
    names: tuple[str, ...]

    def __str__(self) -> str:
        what = f"from {self.module} import {', '.join(self.names)}" if self.names else self.module
        return f"{self.source.relative_to(ROOT)}:{self.line}: {what}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def module_exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, text: str | None = None) -> Iterator[Import]:
    """Every import in ``path`` (or in ``text``, as if it were that file) — also those inside
    functions and ``TYPE_CHECKING`` blocks — resolved to absolute module names;
    ``from package import submodule`` counts as the submodule."""
    source = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(source, filename=str(path))
    here = module_name(path).split(".")
    package = here if is_package(path) else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names: list[str] = []
            for alias in node.names:
                if module_exists(f"{module}.{alias.name}"):
                    yield Import(path, node.lineno, f"{module}.{alias.name}", ())
                else:
                    names.append(alias.name)
            if names:
                yield Import(path, node.lineno, module, tuple(names))


def ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def is_public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def face_of(module: str) -> str | None:
    for face, prefixes in FACES.items():
        if any(within(module, prefix) for prefix in prefixes):
            return face
    return None


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def face_violation(imp: Import, face: str) -> str | None:
    """Why ``imp``, in a module of ``face``, breaks the rule; None when it keeps it."""
    target = imp.module
    if not ours(target) or face_of(target) == face:
        return None
    if target == PACKAGE:
        private = [name for name in imp.names if name not in messagestore.__all__]
        if private:
            return f"takes {', '.join(private)} from messagestore, not in messagestore.__all__"
        return None
    if is_public(target):
        return None
    other = face_of(target)
    if other is not None:
        if target == FACES[other][0]:
            return None  # another face, through its package's interface
        return f"reaches into the {other} face's private module {target}"
    return f"imports the private core module {target}"


def test_the_faces_import_only_the_public_store_api() -> None:
    violations = []
    checked = 0
    for path in sources(PACKAGE):
        face = face_of(module_name(path))
        if face is None:
            continue
        checked += 1
        for imp in imports_of(path):
            why = face_violation(imp, face)
            if why is not None:
                violations.append(f"{imp} ({face}): {why}")
    assert checked > 40  # the faces were found
    assert not violations, "\n".join(violations)


def test_the_core_never_imports_a_face() -> None:
    violations = []
    for path in sources(PACKAGE):
        if face_of(module_name(path)) is not None:
            continue
        for imp in imports_of(path):
            face = face_of(imp.module)
            if face is not None:
                violations.append(f"{imp}: the core imports the {face} face")
    assert not violations, "\n".join(violations)


def test_pubsub_never_imports_messagestore() -> None:
    paths = sources("pubsub")
    assert paths
    violations = [str(imp) for path in paths for imp in imports_of(path) if ours(imp.module)]
    assert not violations, "\n".join(violations)


def test_the_checker_refuses_a_private_reach() -> None:
    # The rule itself, on statements as if written in a module of the command line.
    probe = ROOT / "messagestore" / "_cli" / "_probe.py"  # never written: parsed from text
    cases = {
        "from .._database._database import open_database": "private core module",
        "from .._dispatch import Dispatcher": "private core module",
        "from .._dispatch._turn import Turn": "private core module",
        "from .. import Repository": "not in messagestore.__all__",
        "from .. import Dispatcher": "not in messagestore.__all__",
        "import messagestore._store": "private core module",
        "from messagestore._feed import _feed": "private core module",
        "from .._sync._store import SyncStore": "blocking twin face's private module",
        "from ..dispatch import Dispatcher": None,
        "from .. import Store, open_store": None,
        "from .. import dispatch": None,
        "from ..sync import SyncStore": None,
        "from .._demo import run_users": None,
        "from ._common import Target": None,
        "import asyncio": None,
    }
    for statement, expected in cases.items():
        found = [
            why
            for imp in imports_of(probe, statement)
            if (why := face_violation(imp, "command line")) is not None
        ]
        if expected is None:
            assert not found, (statement, found)
        else:
            assert found and expected in found[0], (statement, found)
