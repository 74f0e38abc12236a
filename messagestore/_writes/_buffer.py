"""The per-message buffer: what was accepted, what is written, what is dirty. No I/O, no awaits.

State per message id lives in an ``Entry``. ``accept`` stores a private copy as the entry's
``pending`` state and bumps ``accepted``; ``take`` moves the pending states of some entries into
a ``Batch`` (the snapshot a write carries) and marks them in flight; ``committed`` records what
became durable (``durable`` rises to the ``accepted`` count the batch saw) and says which
states are terminal; ``restore`` puts the snapshots of a failed write back unless a newer change
replaced them. Every method is plain synchronous code on the event loop's thread, so the buffer
can be tested without a database and no two tasks ever see it half changed.

Terminal judgement (``_terminal``) is made against the last *written* state: a change is
terminal when, compared with it, the message became finished, a tool call was added or removed
or changed ``finished``, or reasoning ended.

Memory: an entry is released once it has nothing pending and nothing in flight and either its
message is finished (right after the write) or it has been idle for ``idle_release`` seconds
(``release_idle``, called by the flusher, and by the writer itself when debouncing is off). A
later update of a released message is judged against nothing written, which at worst makes one
more write synchronous; the fields its row keeps for life (``session_id``, ``role``,
``created_at``) are remembered (bounded), so a later update that changes one is still refused.
For a message this store never saw (created elsewhere) nothing is known: its first write reads
the row's lifelong fields and refuses a state that changes one (and drops it: it can never be
written); from then on updates are checked against the row's values.
Deleted or vanished ids are remembered (bounded) so that late updates are refused.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .._database._group_commit import ItemResult, WriteItem, WriteResult
from .._errors import InvalidMessage, MessageNotFound
from .._model import Message, Role, utc_now
from ._terminal import Marks, marks_of

__all__ = ["Batch", "Buffer", "Entry", "Settled"]

_TOMBSTONES = 10_000
_LIFELONG = ("session_id", "role", "created_at")
Lifelong = tuple[str, Role, datetime]
"""The fields a row keeps for life, in ``_LIFELONG`` order."""


class Entry:
    """Buffered state of one message id."""

    __slots__ = (
        "accepted",
        "accepted_marks",
        "appended",
        "base",
        "deleting",
        "dirty_since",
        "durable",
        "error",
        "id",
        "in_flight",
        "last_touch",
        "lifelong",
        "pending",
        "refusals",
        "retry_at",
        "seq",
        "session_id",
        "streaming",
        "taken",
        "ticks",
        "vanished",
        "verified",
        "written",
        "written_marks",
    )

    def __init__(self, message: Message, written: Message | None) -> None:
        self.id = message.id
        self.session_id = message.session_id
        # What the row keeps for life, as first seen (checked against what a released entry
        # of the id had): every later update must agree, whatever is pending or in flight.
        self.lifelong: Lifelong = (message.session_id, message.role, message.created_at)
        # False while ``lifelong`` is only what an update said: the next write checks it
        # against the row (a message created elsewhere, never seen here).
        self.verified = written is not None
        self.pending: Message | None = None
        self.written = written
        self.written_marks: Marks | None = None if written is None else marks_of(written)
        self.accepted_marks = self.written_marks
        self.accepted = 0
        self.durable = 0
        # The accepted count carried by the newest snapshot a write took.
        self.taken = 0
        self.dirty_since = 0.0
        self.last_touch = time.monotonic()
        # The newest write that carries a snapshot of this entry, until it settles.
        self.in_flight: Batch | None = None
        self.deleting = False
        # A write found the row gone (deleted by another process): every writer of this
        # entry that waited for a write is told (``MessageNotFound``).
        self.vanished = False
        # The database's refusal of this entry's last write, if the rest went without it;
        # consecutive refusals, and when a tick may try it again (its own backoff).
        self.error: Exception | None = None
        self.refusals = 0
        self.retry_at = 0.0
        # What is stored (see ``_database._appends``): the row's key, whether appends follow
        # its base, the characters and appends since the base, the base's streamed size.
        self.seq: int | None = None
        self.streaming = False
        self.appended = 0
        self.ticks = 0
        self.base = 0


@dataclass(slots=True)
class Batch:
    """The snapshots one write carries: entries, their states, accepted counts, ages."""

    entries: list[Entry] = field(default_factory=list)
    states: list[Message] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)
    items: list[WriteItem] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    verify: set[str] = field(default_factory=set)  # ids whose lifelong fields are unchecked


@dataclass(slots=True)
class Settled:
    """What a committed batch means for subscribers: (state, terminal) per written row."""

    announced: list[tuple[Message, bool]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: dict[str, Exception] = field(default_factory=dict)
    staleness: list[float] = field(default_factory=list)


class Buffer:
    """Accepted states per message id; see the module docstring."""

    def __init__(self, *, idle_release: float = 30.0) -> None:
        self.idle_release = idle_release
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.dirty: dict[str, Entry] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        # Released entries' lifelong fields, so that releasing never lifts the refusal.
        self._released: OrderedDict[str, Lifelong] = OrderedDict()
        self.updates = 0
        self.coalesced = 0
        # Store streamed text as appends (``_database._appends``); False writes every change
        # whole, as before appends existed (the benchmark compares the two).
        self.appends = True

    # -- accepting ---------------------------------------------------------------------------

    def last_accepted(self, message_id: str) -> Message | None:
        """The newest accepted state of the id (pending or written), if the buffer has one.

        Raises ``MessageNotFound`` for an id that was deleted or found missing.
        """
        entry = self.entries.get(message_id)
        if entry is None:
            if message_id in self._gone:
                raise MessageNotFound(message_id)
            return None
        return entry.pending or entry.written

    def track_created(self, message: Message) -> Entry:
        """Remember a just-created message as written, for terminal judgement."""
        self._gone.pop(message.id, None)
        self._released.pop(message.id, None)
        entry = self.entries[message.id] = Entry(message, message)
        return entry

    def accept(self, copy: Message, *, streaming_only: bool) -> tuple[Entry, bool]:
        """Buffer ``copy`` (validated, owned by the buffer); return (entry, terminal).

        ``streaming_only`` says the copy differs from the last accepted state only in streamed
        text or thinking, so its terminal facts are those of that state (no scan needed).
        A change of a field the row keeps for life (``session_id``, ``role``, ``created_at``)
        is refused with ``InvalidMessage``: the row would keep the old value.
        """
        entry = self.entries.get(copy.id)
        if entry is None:
            if copy.id in self._gone:
                raise MessageNotFound(copy.id)
            released = self._released.get(copy.id)
            if released is not None:
                _check_lifelong(copy.id, released, copy)
                del self._released[copy.id]
            entry = self.entries[copy.id] = Entry(copy, None)
            entry.verified = released is not None
        elif entry.deleting:
            raise MessageNotFound(copy.id)
        else:
            if not streaming_only:
                _check_lifelong(copy.id, entry.lifelong, copy)
            self.entries.move_to_end(copy.id)
        self.updates += 1
        now = time.monotonic()
        entry.last_touch = now
        if entry.pending is None:
            entry.dirty_since = now
        else:
            self.coalesced += 1
        entry.pending = copy
        entry.accepted += 1
        entry.error = None
        self.dirty[copy.id] = entry
        if not (streaming_only and entry.accepted_marks is not None):
            entry.accepted_marks = marks_of(copy)
        return entry, entry.accepted_marks.is_terminal_after(entry.written_marks)

    # -- writing -----------------------------------------------------------------------------

    def ready(self, now: float | None = None) -> list[Entry]:
        """Dirty entries with no write in flight (what a tick writes); with ``now``, not
        those whose refused state waits for its own retry time."""
        if now is None:
            return [e for e in self.dirty.values() if e.in_flight is None]
        return [e for e in self.dirty.values() if e.in_flight is None and e.retry_at <= now]

    def next_retry(self) -> float | None:
        """The earliest retry time of a refused state waiting for one, if any."""
        waiting = [e.retry_at for e in self.dirty.values() if e.in_flight is None and e.retry_at]
        return min(waiting, default=None)

    def take(self, entries: Iterable[Entry]) -> Batch:
        """Move the entries' pending states into a new batch and mark them in flight."""
        batch = Batch()
        now = utc_now()
        for entry in entries:
            state = entry.pending
            if state is None or entry.deleting:
                continue
            state.updated_at = now
            batch.entries.append(entry)
            batch.states.append(state)
            batch.seen.append(entry.accepted)
            batch.ages.append(entry.dirty_since)
            batch.items.append(
                WriteItem(
                    state,
                    # Appends need the stored state; with another write of this id in flight
                    # (or its row's lifelong fields unchecked) it is not known: write it whole.
                    entry.written
                    if entry.in_flight is None and entry.verified and self.appends
                    else None,
                    entry.seq,
                    entry.streaming,
                    entry.appended,
                    entry.ticks,
                    entry.base,
                )
            )
            if not entry.verified:
                batch.verify.add(entry.id)
            entry.pending = None
            entry.in_flight = batch
            entry.taken = entry.accepted
            self.dirty.pop(entry.id, None)
        return batch

    def committed(self, batch: Batch, result: WriteResult) -> Settled:
        """Record a committed batch; return what to announce. The states are the buffer's own
        (now its ``written`` ones): whoever publishes them publishes copies.

        ``result.lifelong``: what the rows of the batch's unverified ids keep for life, read
        by the write: from now on updates are checked against it.
        """
        settled = Settled()
        gone = result.missing
        refused = result.failed
        lifelong = result.lifelong
        committed_at = time.monotonic()
        for entry, state, seen, age in zip(
            batch.entries, batch.states, batch.seen, batch.ages, strict=True
        ):
            if entry.in_flight is batch:
                entry.in_flight = None
            if lifelong and entry.id in lifelong:
                entry.lifelong, entry.verified = lifelong[entry.id], True
            if entry.id in refused:
                settled.refused[entry.id] = refused[entry.id]
                entry.error = refused[entry.id]
                if (state.session_id, state.role, state.created_at) != entry.lifelong:
                    continue  # it changes what the row keeps for life: never writable
                self._put_back(entry, state, seen)
                continue
            entry.durable = max(entry.durable, seen)
            entry.refusals, entry.retry_at = 0, 0.0
            if entry.id in gone:
                if not entry.deleting:  # else this store deleted it: nothing to report
                    settled.missing.append(entry.id)
                    entry.vanished = True
                self.forget(entry)
                continue
            settled.staleness.append(committed_at - age)
            stored = result.items[entry.id]
            state.revision = stored.revision
            _record_storage(entry, stored)
            marks = marks_of(state)
            terminal = marks.is_terminal_after(entry.written_marks)
            entry.written, entry.written_marks = state, marks
            if entry.deleting:
                continue
            settled.announced.append((state, terminal))
            if entry.pending is None and marks.finished and entry.in_flight is None:
                self._release(entry)
        return settled

    def restore(self, batch: Batch) -> None:
        """The write did not happen: put its snapshots back (unless superseded)."""
        for entry, state, seen in zip(batch.entries, batch.states, batch.seen, strict=True):
            if entry.in_flight is batch:
                entry.in_flight = None
            self._put_back(entry, state, seen)

    def _put_back(self, entry: Entry, state: Message, seen: int) -> None:
        """Make ``state`` pending again, unless something newer replaced it: a newer change
        (pending), or a newer snapshot already taken by a later write (which, queued behind
        this one, will write it — or put it back itself if it fails too)."""
        if entry.deleting or seen < entry.taken:
            return
        if entry.pending is None:
            entry.pending = state
        self.dirty.setdefault(entry.id, entry)

    # -- deleting ----------------------------------------------------------------------------

    def begin_delete(self, is_target: Callable[[Entry], bool]) -> list[Entry]:
        """Refuse updates to the matching entries from now on and drop what they had pending."""
        targets = [e for e in self.entries.values() if is_target(e)]
        for entry in targets:
            entry.deleting = True
            entry.pending = None
            self.dirty.pop(entry.id, None)
        return targets

    def abort_delete(self, targets: Sequence[Entry]) -> None:
        for entry in targets:
            entry.deleting = False

    def deleted(self, message_ids: Iterable[str]) -> None:
        """The rows are gone: forget their entries and refuse later updates."""
        for message_id in message_ids:
            entry = self.entries.get(message_id)
            if entry is not None:
                self.forget(entry)
            else:
                self._remember_gone(message_id)

    def forget(self, entry: Entry) -> None:
        entry.deleting = True
        entry.pending = None
        self.dirty.pop(entry.id, None)
        self.entries.pop(entry.id, None)
        self._remember_gone(entry.id)

    def _remember_gone(self, message_id: str) -> None:
        self._released.pop(message_id, None)
        self._gone[message_id] = None
        if len(self._gone) > _TOMBSTONES:
            self._gone.popitem(last=False)

    def _release(self, entry: Entry) -> None:
        """Drop a clean entry, remembering (bounded) the fields its row keeps for life."""
        self.entries.pop(entry.id, None)
        self._released[entry.id] = entry.lifelong
        if len(self._released) > _TOMBSTONES:
            self._released.popitem(last=False)

    # -- memory ------------------------------------------------------------------------------

    def release_idle(self, now: float) -> None:
        """Release clean entries untouched for ``idle_release`` seconds."""
        cutoff = now - self.idle_release
        for entry in list(self.entries.values()):
            if entry.last_touch > cutoff:
                break
            if entry.pending is None and entry.in_flight is None and not entry.deleting:
                self._release(entry)

    def release_clean(self, entry: Entry) -> None:
        """Release ``entry`` now if it holds nothing pending or in flight (no debouncing)."""
        if entry.pending is None and entry.in_flight is None and not entry.deleting:
            self._release(entry)

    @property
    def pending_count(self) -> int:
        """Messages with a change not yet durable.

        Safe to read from another thread (a metrics reader): ``list()`` of the entries runs
        without releasing the GIL, so the dict cannot change under the count.
        """
        return sum(1 for e in list(self.entries.values()) if e.pending is not None)

    @property
    def entry_count(self) -> int:
        """Messages the buffer holds state for (pending or recently written)."""
        return len(self.entries)


def _check_lifelong(message_id: str, known: Lifelong, after: Message) -> None:
    for name, old in zip(_LIFELONG, known, strict=True):
        new = getattr(after, name)
        if old != new:
            raise InvalidMessage(
                f"message {message_id!r}: {name} cannot change once stored "
                f"({old!r} -> {new!r}); create a new message instead"
            )


def _record_storage(entry: Entry, stored: ItemResult) -> None:
    if stored.seq is not None:
        entry.seq = stored.seq
    if stored.appended:
        entry.streaming = True
        entry.appended += stored.chars
        entry.ticks += 1
    else:
        entry.streaming = False
        entry.appended = entry.ticks = 0
        entry.base = stored.chars
