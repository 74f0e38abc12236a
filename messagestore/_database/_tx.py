"""``Tx``: one running transaction, as every job receives it.

It carries, in plain sight: ``conn`` (the SQLAlchemy ``Connection``), ``writer_id`` and
``source`` (what the commit's ``NOTIFY`` names), ``read_only`` and, for reads, the
``stream_cache``; the revisions the job took (``take_revisions``, ``lock_counter``), the changes
it recorded (``record``) and ``after_commit`` callbacks, which the database runs and announces,
on the loop in commit order, once the transaction committed. A ``Tx`` belongs to the thread
running its job. The story: docs/ARCHITECTURE.md, "The database: jobs and transactions".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from .._changes import Change
from . import _revisions

if TYPE_CHECKING:
    from ._stream_cache import StreamCache

__all__ = ["NO_SOURCE", "Tx"]

NO_SOURCE = "-"
"""The ``NOTIFY`` source of a transaction without a writer id."""


class Tx:
    """One running transaction: its connection, its writer, what it took and recorded."""

    __slots__ = (
        "_after_commit",
        "_changes",
        "_taken",
        "conn",
        "read_only",
        "stream_cache",
        "writer_id",
    )

    def __init__(
        self,
        conn: Connection,
        *,
        writer_id: str | None = None,
        read_only: bool = False,
        stream_cache: StreamCache | None = None,
    ) -> None:
        if stream_cache is not None and not read_only:
            # A write job could read its own appends into the cache, then roll back.
            raise ValueError("only a read-only transaction uses the stream cache")
        self.conn = conn
        self.writer_id = writer_id
        self.read_only = read_only
        self.stream_cache = stream_cache
        self._taken: tuple[int, int] | None = None
        self._changes: list[Change] = []
        self._after_commit: list[Callable[[], None]] = []

    @property
    def source(self) -> str:
        """What this transaction's commit ``NOTIFY`` names as its sender: the writer id."""
        return NO_SOURCE if self.writer_id is None else self.writer_id

    # -- revisions -------------------------------------------------------------------------------

    def take_revisions(self, count: int) -> int:
        """Take ``count`` new revisions now and return the first.

        The first statement of a job that changes messages or sessions (``_revisions``: the
        counter row is locked to the commit, so such jobs commit in revision order).
        """
        self._check_writable("takes no revisions")
        last = _revisions.bump(self.conn, count, self.source)
        first = last - count + 1
        taken = self._taken
        self._taken = (first, last) if taken is None else (min(taken[0], first), last)
        return first

    def lock_counter(self) -> _revisions.Counter:
        """Lock the counter row (the first statement of the job) for a job that learns only
        as it goes how many revisions it needs: ``counter.take()`` hands them out,
        ``counter.close()`` takes them (``take_revisions``)."""
        self._check_writable("locks no counter")
        return _revisions.Counter(self, _revisions.lock_counter_row(self.conn))

    @property
    def revisions(self) -> tuple[int, int] | None:
        """The (first, last) revisions this transaction took so far, or None."""
        return self._taken

    # -- changes ---------------------------------------------------------------------------------

    def record(self, changes: Iterable[Change]) -> None:
        """Have ``changes`` announced through the change feed once this transaction commits
        (in commit order with every other change; dropped if it rolls back)."""
        self._check_writable("records no changes")
        self._changes.extend(changes)

    @property
    def changes(self) -> list[Change]:
        """The changes recorded so far, in the order they were recorded."""
        return self._changes

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the event loop once this transaction committed, in commit
        order, before its changes are announced (not at all if it rolls back)."""
        self._after_commit.append(callback)

    @property
    def commit_callbacks(self) -> list[Callable[[], None]]:
        """The ``after_commit`` callbacks, in the order they were added."""
        return self._after_commit

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise RuntimeError(f"a read-only transaction {what}")

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "write"
        return f"Tx({mode}, writer_id={self.writer_id!r}, revisions={self._taken})"
