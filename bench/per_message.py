"""The per-message strategy: each message of a tick in its own transaction (the Go design).

The store itself always group-commits a tick's messages in one transaction; for comparison the
benchmark swaps the store's batch write for one that submits one job per message and reports
the batch when the last of them committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

from messagestore import Store
from messagestore._database import _group_commit as group_commit
from messagestore._database._group_commit import WriteItem, WriteResult

__all__ = ["commit_per_message"]


def commit_per_message(store: Store) -> None:
    """Make ``store`` commit every message of a batch in its own transaction."""
    repository = store._repository
    writer = store.messages._writer
    database = repository.database

    def write_messages(
        batch: Sequence[WriteItem],
        on_commit: Any,
        *,
        verify: frozenset[str] = frozenset(),
        also: Any = None,
    ) -> asyncio.Future[WriteResult]:
        if also is not None:
            raise NotImplementedError("the per-message baseline writes messages alone")
        done: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        results: list[WriteResult] = []
        ranges: list[tuple[int, int]] = []

        def one(result: WriteResult, taken: tuple[int, int] | None, _: Any) -> None:
            results.append(result)
            if taken is not None:
                ranges.append(taken)
            if len(results) < len(batch):
                return
            merged = WriteResult(
                {k: v for r in results for k, v in r.items.items()},
                sum(r.bytes for r in results),
                frozenset().union(*(r.missing for r in results)),
                {k: v for r in results for k, v in r.failed.items()},
                {k: v for r in results for k, v in r.lifelong.items()},
            )
            taken_all = (min(a for a, _ in ranges), max(b for _, b in ranges)) if ranges else None
            on_commit(merged, taken_all, ())
            writer.counters.transactions += len(batch) - 1
            done.set_result(merged)

        futures = []
        for message in batch:
            job = partial(
                group_commit.write_messages, items=[message], verify=verify & {message.state.id}
            )
            futures.append(database.submit_write(job, one))

        def failed(future: asyncio.Future[WriteResult]) -> None:
            error = future.exception()
            if error is not None and not done.done():
                done.set_exception(error)

        for future in futures:
            future.add_done_callback(failed)
        return done

    repository.write_messages = write_messages  # type: ignore[method-assign,assignment]
