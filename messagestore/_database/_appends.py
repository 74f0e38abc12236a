"""Streamed text, stored incrementally: what a tick appended, not the whole message again.

A message's row holds its parts as of its last full write (the base). A tick that only
appended to streamed fields (``_growth``) writes just the appended text: all appends of one
tick go into ONE ``message_appends`` row, and the message gets a ``message_streams`` row; a
read applies the appends after the base. A full write (not a pure append, terminal, or the
appends grew past the base or ``FOLD_TICKS`` ticks) rewrites the row and closes the stream, so
bytes written stay about linear in the text. ``collect`` deletes append rows no stream needs.
The payload format: docs/MODULES.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from .._growth import FIELD_OF, Append, diff, grow
from .._model import Message, Part
from ._schema import feed_state, message_appends, message_streams
from ._stream_cache import CachedStream, Slot, StreamCache
from ._value_lists import ListStatement, values

__all__ = [
    "FOLD_MIN_CHARS",
    "FOLD_TICKS",
    "Append",
    "apply",
    "apply_to",
    "collect",
    "decode",
    "diff",
    "encode",
    "load",
]

FOLD_MIN_CHARS = 16384
"""Appends may grow to the size of the base, and to at least this many characters."""
FOLD_TICKS = 1024
"""At most this many appends between full writes (bounds the cost of reading a stream: about
half a minute of every stream's appends at the default window)."""


def encode(entries: Sequence[tuple[int, int, Sequence[Append]]]) -> str:
    """One batch's payload: ``entries`` are (seq, revision offset), appends, in any order."""
    flat: list[Any] = []
    last_seq = last_offset = 0
    for seq, offset, appends in sorted(entries, key=lambda e: e[0]):
        flat += (seq - last_seq, offset - last_offset, len(appends))
        last_seq, last_offset = seq, offset
        for index, field, text in appends:
            flat += (3 * index + field, text)
    return json.dumps(flat, separators=(",", ":"))


def decode(
    payload: str, first_revision: int, after: Mapping[int, int] | None = None
) -> Iterator[tuple[int, int, list[Append]]]:
    """(seq, revision, appends) per entry of one batch row.

    With ``after`` (``seq`` -> revision): only the entries of those messages with a revision
    above theirs; the others are stepped over without building their appends (a row holds
    every stream's appends, a read usually wants a few of them).
    """
    flat = json.loads(payload)
    seq, revision, at, end = 0, first_revision, 0, len(flat)
    while at < end:
        seq += flat[at]
        revision += flat[at + 1]
        count = flat[at + 2]
        at += 3
        if after is None or revision > after.get(seq, revision):
            pairs = range(at, at + 2 * count, 2)
            yield seq, revision, [(flat[i] // 3, flat[i] % 3, flat[i + 1]) for i in pairs]
        at += 2 * count


def apply(message: Message, appends: Iterable[Append]) -> None:
    """Apply appends to ``message`` in place (parts are frozen: replaced, not changed)."""
    apply_to(message.parts, appends)


def apply_to(parts: list[Part], appends: Iterable[Append]) -> None:
    """Apply appends to a list of parts in place; ``ValueError`` if one does not fit."""
    for index, field, text in appends:
        if not 0 <= index < len(parts):
            raise ValueError(f"append for part {index}: the message has {len(parts)} parts")
        part = parts[index]
        if FIELD_OF.get(type(part)) != field:
            # the base and its appends disagree: the row was rewritten under the stream
            raise ValueError(f"append for part {index} ({field}) does not fit the message")
        parts[index] = grow(part, text)


def load(conn: Connection, by_seq: dict[int, Message], cache: StreamCache | None = None) -> None:
    """Bring messages read from their rows up to date with their appends (in place).

    ``by_seq`` maps each message's ``seq`` to the message decoded from its row; messages
    without an open stream are left as they are. Each message's ``revision`` becomes that of
    its newest append. One read of the streams table, one range read of the append rows: from
    the oldest stream's start, or — given the ``StreamCache`` of a read-only job
    (``Tx.stream_cache``) that holds every wanted stream — only the rows written since the
    cache's reads.
    """
    if not by_seq:
        return
    streams = _open_streams(conn, by_seq)
    if not streams:
        return
    horizon = 0
    known: dict[int, CachedStream] = {}
    if cache is not None:
        horizon = conn.execute(_HORIZON).scalar_one()
        for seq, appends_from in streams.items():
            entry = cache.get(seq, by_seq[seq].revision, appends_from, horizon)
            if entry is not None:
                known[seq] = entry
    # Per message: the revision after which its appends are still to be read.
    after = {seq: known[seq].through if seq in known else streams[seq] - 1 for seq in streams}
    texts: dict[int, dict[Slot, str]] = {
        seq: dict(known[seq].texts) if seq in known else {} for seq in streams
    }
    newest: dict[int, tuple[int, Any]] = {
        seq: (known[seq].revision, known[seq].updated_at) for seq in known
    }
    rows = conn.execute(_ROWS_AFTER, {"after": min(after.values())})
    for first, updated_at, payload in rows:
        for seq, revision, appends in decode(payload, first, after):
            slots = texts[seq]
            for index, field, text in appends:
                slots[(index, field)] = slots.get((index, field), "") + text
            newest[seq] = (revision, updated_at)
    for seq, slots in texts.items():
        message = by_seq[seq]
        base = message.revision
        apply(message, [(index, field, text) for (index, field), text in slots.items()])
        revision, updated_at = newest.get(seq, (0, None))
        if revision > message.revision:
            message.revision = revision
            message.updated_at = updated_at
        if cache is not None:
            cache.put(
                seq,
                CachedStream(base, streams[seq], horizon, slots, revision, updated_at),
            )


_HORIZON = select(feed_state.c.revision).where(feed_state.c.id == 1)
_ROWS_AFTER = (
    select(
        message_appends.c.first_revision, message_appends.c.updated_at, message_appends.c.payload
    )
    .where(message_appends.c.last_revision > bindparam("after"))
    .order_by(message_appends.c.last_revision)
)


def _open_streams(conn: Connection, by_seq: dict[int, Message]) -> dict[int, int]:
    """``seq`` -> first append revision, for the messages of ``by_seq`` that stream."""
    seq_of = {m.id: seq for seq, m in by_seq.items()}
    rows = conn.execute(_STREAMS(conn), {"ids": values(conn, sorted(seq_of))})
    return {seq_of[message_id]: appends_from for message_id, appends_from in rows}


_STREAMS = ListStatement(
    lambda one_of: select(message_streams.c.message_id, message_streams.c.appends_from).where(
        one_of(message_streams.c.message_id, "ids")
    )
)


def collect(conn: Connection) -> int:
    """Delete append rows that no open stream needs; return how many."""
    needed = conn.execute(select(func.min(message_streams.c.appends_from))).scalar_one()
    query = delete(message_appends)
    if needed is not None:
        query = query.where(message_appends.c.last_revision < needed)
    return int(conn.execute(query).rowcount or 0)


def open_streams(conn: Connection, opened: Sequence[tuple[str, int]]) -> None:
    """Record that these messages (id, first append revision) now stream."""
    if opened:
        conn.execute(_OPEN, [{"message_id": i, "appends_from": r} for i, r in opened])


_CLOSE = ListStatement(
    lambda one_of: delete(message_streams).where(one_of(message_streams.c.message_id, "ids"))
)
_OPEN = insert(message_streams)


def close_streams(conn: Connection, message_ids: Sequence[str]) -> int:
    """These messages were written whole (or deleted): their appends are no longer needed.
    Returns how many streams were open."""
    if not message_ids:
        return 0
    result = conn.execute(_CLOSE(conn), {"ids": values(conn, message_ids)})
    return int(result.rowcount or 0)
