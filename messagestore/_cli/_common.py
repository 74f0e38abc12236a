"""What every ``messagestore`` command shares: the database it talks to, and one-line errors.

``resolve_target`` resolves the URL as the library does and checks its scheme;
``connect_check`` reports an unreachable PostgreSQL server within ``CONNECT_TIMEOUT`` seconds
as a ``CliError``, never a hang; ``open_cli_store`` opens the store behind that check
(``read_only=True``: never creates, migrates, leases or sweeps); ``describe_error`` turns any
exception into the one line the command prints. Built on the public API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from .. import MessageStoreError, Store, database_url, open_store

__all__ = [
    "CONNECT_TIMEOUT",
    "CliError",
    "Target",
    "connect_check",
    "describe_error",
    "expected_error",
    "open_cli_store",
    "resolve_target",
    "stop_on_signals",
]

CONNECT_TIMEOUT = 5.0
"""Seconds a command waits for a database server to accept a connection."""


class CliError(Exception):
    """A failure a command reports as one line on stderr, with exit status 1."""


@dataclass(frozen=True, slots=True)
class Target:
    """The database a command works on."""

    url: str
    """The normalized SQLAlchemy async URL (with its password, for connecting)."""
    display: str
    """The URL with the password hidden, for messages."""
    backend: str
    """``"sqlite"`` or ``"postgresql"``."""
    path: Path | None
    """The SQLite file, or ``None`` for PostgreSQL and in-memory SQLite."""

    @property
    def where(self) -> str:
        """Where the data lives, for people: the file path, else the URL."""
        return str(self.path) if self.path is not None else self.display

    def require_existing(self) -> None:
        """Raise ``CliError`` if this is an SQLite file that does not exist yet.

        Inspection commands call it so that looking never creates an empty database.
        """
        if self.path is not None and not self.path.exists():
            raise CliError(
                f"no database at {self.path} (run `messagestore demo` to create one, or pass --url)"
            )


def resolve_target(url: str | None) -> Target:
    """The database for ``url`` as the library resolves it; ``ValueError`` for a bad URL."""
    normalized = database_url(url)
    parsed = make_url(normalized)
    backend = parsed.get_backend_name()
    path: Path | None = None
    if backend == "sqlite":
        database = parsed.database or ""
        if database not in ("", ":memory:") and not database.startswith("file::memory:"):
            path = Path(database).expanduser().absolute()
    return Target(normalized, parsed.render_as_string(hide_password=True), backend, path)


async def connect_check(target: Target) -> None:
    """Connect once and disconnect; raise ``CliError`` (within the timeout) if that fails.

    SQLite needs no check: opening the file reports its own clear error.
    """
    if target.backend != "postgresql":
        return
    engine = create_async_engine(target.url, connect_args={"timeout": CONNECT_TIMEOUT})
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT + 1), engine.connect():
            pass
    except TimeoutError:
        raise CliError(
            f"cannot reach the database server at {target.display}: "
            f"no answer within {CONNECT_TIMEOUT:g} s"
        ) from None
    except (OSError, SQLAlchemyError) as exc:
        raise CliError(
            f"cannot connect to the database at {target.display}: {_reason(exc)}"
        ) from exc
    finally:
        await engine.dispose()


async def open_cli_store(
    target: Target, *, debounce: float | None = None, read_only: bool = False
) -> Store:
    """``open_store`` on ``target`` after :func:`connect_check`; the caller closes the store.

    ``read_only``: a store that only looks (see the module docstring).
    """
    if read_only:
        target.require_existing()
    await connect_check(target)
    if read_only:
        return await open_store(target.url, read_only=True)
    if debounce is None:
        return await open_store(target.url)
    return await open_store(target.url, debounce=debounce)


def _reason(exc: BaseException) -> str:
    """The interesting first line of a database or OS error."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def expected_error(exc: BaseException) -> bool:
    """True for failures a user causes or meets (bad input, unreachable or refusing database).

    Anything else is a bug, reported as an unexpected error.
    """
    if isinstance(exc, CliError | MessageStoreError | ValueError | OSError | SQLAlchemyError):
        return True
    # asyncpg errors that reach us unwrapped (authentication, missing database, ...).
    module = type(exc).__module__ or ""
    return module.startswith("asyncpg")


def describe_error(exc: BaseException, *, debug: bool = False) -> str:
    """The one line printed after ``messagestore: error:`` for ``exc``.

    An unexpected error (a bug) says so, and points at ``--debug`` unless ``debug`` is set.
    """
    if isinstance(exc, CliError | MessageStoreError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out: {_reason(exc)}" if str(exc) else "timed out"
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {_reason(exc)}"
    if expected_error(exc):
        return _reason(exc)
    return f"unexpected {type(exc).__name__}: {_reason(exc)} (rerun with --debug for the traceback)"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Cancel the current task on SIGINT or SIGTERM, whatever handler the process inherited
    (an inherited SIG_IGN included); yields the signals received, in order."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()  # again on a second signal: a stuck cleanup is cut short too

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            continue
        installed.append(signum)
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
