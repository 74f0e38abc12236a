"""``messagestore db upgrade|current|history``: the alembic migrations without learning alembic.

``upgrade`` brings the database to the newest revision this messagestore ships and says from
which to which (a database of a newer messagestore is refused: ``SchemaTooNew``). ``current``
prints the database's revision, ``(head)`` when newest, ``(unknown: ...)`` when newer; it never
creates a database (a missing SQLite file prints ``none``). ``history`` lists the migrations,
newest first, without opening the database.
"""

from __future__ import annotations

from typing import TextIO

from .. import migrations
from ._common import CONNECT_TIMEOUT, Target, connect_check

__all__ = ["db_current", "db_history", "db_upgrade"]


async def db_upgrade(target: Target, out: TextIO) -> None:
    """Migrate ``target`` to the newest revision and report what changed."""
    await connect_check(target)
    before, after = await migrations.upgrade(target.url, connect_timeout=CONNECT_TIMEOUT)
    if before == after:
        print(f"{target.where} is already at the newest revision {_revs(after)}", file=out)
    else:
        print(
            f"upgraded {target.where} from {_revs(before) or 'an empty database'} "
            f"to {_revs(after)}",
            file=out,
        )


async def db_current(target: Target, out: TextIO) -> None:
    """Print the revision ``target`` is at, without creating or changing anything."""
    if target.path is not None and not target.path.exists():
        print(f"none (no database at {target.path})", file=out)
        return
    await connect_check(target)
    revisions = await migrations.current(target.url, connect_timeout=CONNECT_TIMEOUT)
    if not revisions:
        print("none (no messagestore schema yet; run `messagestore db upgrade`)", file=out)
        return
    head = migrations.head()
    for revision in revisions:
        if revision == head:
            note = "(head)"
        elif migrations.is_known(revision):
            note = f"(behind head {head}; run `messagestore db upgrade`)"
        else:
            note = "(unknown: written by a newer messagestore; upgrade messagestore)"
        print(f"{revision} {note}", file=out)


def db_history(out: TextIO) -> None:
    """List the shipped migrations, newest first: ``down -> revision (head), description``."""
    for migration in migrations.history():
        down = ", ".join(migration.down_revisions) or "<base>"
        head = " (head)" if migration.is_head else ""
        print(f"{down} -> {migration.revision}{head}, {migration.description}", file=out)


def _revs(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions)
