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
import textwrap
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


# -- tests patch nothing private ----------------------------------------------------------------

PATCHING_ALLOWED: dict[str, str] = {
    "tests/feed/test_across_processes.py": "counts the feed's reads of the revision counter to "
    "prove nothing polls while nobody subscribes; no public figure counts them",
    "tests/feed/test_compaction.py": "shortens the pruner's hourly period and the replay page "
    "size (module constants of the feed) and observes each background pruning pass",
    "tests/feed/test_listen.py": "unit tests of the PostgreSQL listener's private connect "
    "helpers, whose bounds are module constants",
    "tests/feed/test_subscribe.py": "shrinks the replay page size (a module constant of the "
    "feed) so that a replay spans pages",
    "tests/feed/test_waits.py": "fails or holds one kind of the feed's reads (the changes, the "
    "counter) while the others go on; faults pick jobs by read or write, not by query",
    "tests/store/test_job_deadline.py": "times out a blocking subscription's own replay read "
    "once while its other reads go on; faults pick jobs by read or write, not by query",
    "tests/store/test_recovery_sweep.py": "fails the background sweep once while the "
    "heartbeat, also a write job, must go on; faults cannot pick the sweep among writes",
    "tests/store/test_stream_read_cache.py": "counts the append rows a read decodes, to prove "
    "the cache spares them; no public figure counts rows read",
    "tests/support/crash_child.py": "records when each group commit and heartbeat starts and "
    "ends, the evidence of where a kill landed; no public hook sees a write start",
    "tests/writes/test_concurrent_model.py": "counts the feed's publishes independently of the "
    "broker, to check the broker's accounting against it",
    "tests/writes/test_write_outages.py": "an outage in which every group commit fails while "
    "creates go through; faults fail every write job alike",
    "tests/writes/test_update_contract.py": "observes which messages each group commit "
    "carries, and fails chosen ones; no public hook sees a write start",
    "tests/writes/test_write_faults.py": "shortens SQLite's busy timeout, a module constant of "
    "the engine set-up with no store option",
}
"""Test files that still patch a private attribute of a messagestore object, and why no public
or ``messagestore.testing`` seam replaces it (keep this short)."""


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _reaches_private(node: ast.AST) -> bool:
    """True if ``node`` reads a private attribute of something other than ``self``/``cls``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and _private(sub.attr):
            base = sub.value
            if not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                return True
    return False


def _private_imports(tree: ast.Module) -> set[str]:
    """Names bound by imports from private messagestore modules (classes, modules, functions)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            private_module = any(_private(part) for part in node.module.split("."))
            for alias in node.names:
                if private_module or _private(alias.name):
                    names.add(alias.asname or alias.name)
    return names


def _tainted(tree: ast.Module, private_names: set[str]) -> set[str]:
    """Names that hold a private object: assigned from an expression reaching a private
    attribute, or a parameter annotated with a class from a private module."""
    tainted: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _reaches_private(node.value):
            for target in node.targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        tainted.add(sub.id)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            annotated = {n.id for n in ast.walk(node.annotation) if isinstance(n, ast.Name)}
            if annotated & private_names:
                tainted.add(node.arg)
    return tainted


def patches_of(path: Path, text: str | None = None) -> list[str]:
    """Every place where ``path`` (or ``text``) assigns to, or monkeypatches, an attribute of a
    messagestore object that is private or reached through a private attribute."""
    source = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(source, filename=str(path))
    private_names = _private_imports(tree)
    tainted = _tainted(tree, private_names) | private_names
    found: list[str] = []

    def patched(target: ast.expr) -> bool:
        if not isinstance(target, ast.Attribute):
            return False
        base = target.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            return False
        if _private(target.attr) or _reaches_private(base):
            return True
        return any(isinstance(n, ast.Name) and n.id in tainted for n in ast.walk(base))

    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if patched(target):
                found.append(f"{node.lineno}: {ast.unparse(target)} = ...")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("setattr", "delattr")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "monkeypatch"
            and node.args
        ):
            what = node.args[0]
            name = node.args[1] if len(node.args) > 1 else None
            by_path = (
                isinstance(what, ast.Constant)
                and isinstance(what.value, str)
                and what.value.split(".")[0] in (PACKAGE, "pubsub")
            )
            by_name = isinstance(name, ast.Constant) and isinstance(name.value, str)
            private_name = by_name and _private(str(name.value))  # type: ignore[union-attr]
            on_ours = any(
                isinstance(n, ast.Name) and n.id in tainted for n in ast.walk(what)
            ) or _reaches_private(what)
            if by_path or private_name or on_ours:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_tests_patch_no_private_attribute() -> None:
    """Tests drive the library through its public API and ``messagestore.testing`` (faults,
    loops, leases, polls, the must-deliver bound): no test assigns to, or monkeypatches, a
    private attribute of a messagestore object, or anything reached through one."""
    offenders: list[str] = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in PATCHING_ALLOWED:
            continue
        offenders += [f"{relative}:{where}" for where in patches_of(path)]
    assert not offenders, "tests patching private attributes:\n" + "\n".join(offenders)


def test_the_allowlist_holds_only_files_that_patch() -> None:
    stale = [f for f in PATCHING_ALLOWED if not patches_of(ROOT / f)]
    assert not stale, f"these files patch nothing private any more: {stale}"


def test_the_patch_checker_sees_patches() -> None:
    seen = patches_of(
        ROOT / "tests" / "example.py",
        textwrap.dedent(
            """
            from messagestore._database._repository import Repository

            def probe(repository: Repository, store, monkeypatch):
                store._feed._publish = print
                store.messages._broker.must_deliver_timeout = 1
                inner = store._repository
                inner.read_counter = print
                repository.write_messages = print
                monkeypatch.setattr("messagestore._feed._subscription._PAGE", 2)
                monkeypatch.setattr(store, "_lease", None)
                self_like = object()
                self_like.value = 1
                store.messages.flush = print
            """
        ),
    )
    assert [line.split(":")[0] for line in seen] == ["5", "6", "8", "9", "10", "11"]
