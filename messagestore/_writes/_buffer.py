"""The per-message buffer: what was accepted, what is written, what is dirty. No I/O, no awaits.

Per message id an ``Entry`` of small records. ``accept`` stores a private copy as pending;
``take`` moves pending states into a ``Batch`` (in flight); ``committed`` records what became
durable and which states are terminal (``_terminal``, judged against the last *written*
state); ``restore`` puts a failed batch back unless superseded. Plain synchronous code on the
loop's thread. An entry is released once clean and finished or idle for ``idle_release``; the
fields a row keeps for life and deleted ids are remembered (bounded). In full:
docs/MODULES.md; the story: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .._database._group_commit import ItemResult, WriteItem, WriteResult
from .._errors import MessageNotFound
from .._model import Message, utc_now
from .._validation import Lifelong, changed_lifelong, lifelong_of
from ._terminal import Marks, marks_of

__all__ = ["Batch", "Buffer", "Entry", "Settled"]

_TOMBSTONES = 10_000


class Entry:
    """Buffered state of one message id: one small record per concern.

    ``identity``: who the message is for life; ``accepted``: the newest change and what no
    write took yet; ``written``: what writes took, carry and made durable; ``stored``: how
    the row is stored (appends); ``refusal``: the database's refusals of its writes.
    ``deleting``: a delete of it is under way (or done): updates are refused and nothing of
    it is written again; ``vanished``: a write found its row gone (deleted by another
    process), so every writer that waited for a write of it is told (``MessageNotFound``).
    """

    __slots__ = (
        "accepted",
        "deleting",
        "id",
        "identity",
        "refusal",
        "stored",
        "vanished",
        "written",
    )

    def __init__(self, message: Message, written: Message | None) -> None:
        self.id = message.id
        self.identity = Identity(message.session_id, lifelong_of(message), written is not None)
        marks = None if written is None else marks_of(written)
        self.accepted = Accepted(marks, time.monotonic())
        self.written = Written(written, marks)
        self.stored = Stored()
        self.refusal = Refusal()
        self.deleting = False
        self.vanished = False

    @property
    def clean(self) -> bool:
        """Nothing pending, nothing in flight, no delete under way: safe to release."""
        return (
            self.accepted.pending is None and self.written.in_flight is None and not self.deleting
        )


@dataclass(slots=True)
class Identity:
    """Who the message is, for life."""

    session_id: str
    """As first seen: a delete of that session takes the entry."""
    lifelong: Lifelong
    """What the row keeps for life: as first seen (and as a released entry of the id had
    it), or as the row has it once checked. Every later update must agree, whatever is
    pending or in flight."""
    verified: bool
    """False while ``lifelong`` is only what an update said (a message created elsewhere,
    never seen here): the next write checks it against the row."""


@dataclass(slots=True)
class Accepted:
    """What callers handed over: the newest change, and the state no write took yet."""

    marks: Marks | None
    """The terminal facts of the newest accepted state (None: nothing accepted or written)."""
    last_touch: float
    """When a change was last accepted (idle release)."""
    pending: Message | None = None
    """The newest accepted state no write took yet (None: clean)."""
    count: int = 0
    """Changes accepted so far; a write carries the count its snapshot saw."""
    dirty_since: float = 0.0
    """When ``pending`` was set after being clean (staleness)."""


@dataclass(slots=True)
class Written:
    """What writes took, carry and made durable."""

    state: Message | None
    """The last state known to be stored (None: nothing known; write it whole)."""
    marks: Marks | None
    """Its terminal facts: a change is terminal against these."""
    in_flight: Batch | None = None
    """The newest write that carries a snapshot of this entry, until it settles."""
    taken: int = 0
    """The accepted count carried by the newest snapshot a write took."""
    durable: int = 0
    """The accepted count known to be durable."""


@dataclass(slots=True)
class Stored:
    """How the row is stored (see ``_database._appends``)."""

    seq: int | None = None
    """The row's key, once a write reported it."""
    streaming: bool = False
    """Appends follow the row's base."""
    appended: int = 0
    """Characters appended since the base."""
    ticks: int = 0
    """Appends since the base."""
    base: int = 0
    """The base's streamed characters."""

    def record(self, item: ItemResult) -> None:
        """Take in how a committed write stored the row."""
        if item.seq is not None:
            self.seq = item.seq
        if item.appended:
            self.streaming = True
            self.appended += item.chars
            self.ticks += 1
        else:
            self.streaming = False
            self.appended = self.ticks = 0
            self.base = item.chars


@dataclass(slots=True)
class Refusal:
    """The database's refusals of this entry's writes while the rest of their batch committed
    (a refused state waits for its own retry time; see ``_writer``)."""

    error: Exception | None = None
    """The last refusal, until a newer change is accepted."""
    refusals: int = 0
    """Refusals in a row (0 once a write of the entry commits): the backoff grows with it."""
    retry_at: float = 0.0
    """When a tick may try the refused state again (0: at once)."""


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
        return entry.accepted.pending or entry.written.state

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
        # Called once per streamed token: kept flat on purpose.
        message_id = copy.id
        entries = self.entries
        entry = entries.get(message_id)
        if entry is None:
            if message_id in self._gone:
                raise MessageNotFound(message_id)
            released = self._released.get(message_id)
            if released is not None:
                _check_lifelong(copy, released)
                del self._released[message_id]
            entry = entries[message_id] = Entry(copy, None)
            entry.identity.verified = released is not None
        elif entry.deleting:
            raise MessageNotFound(message_id)
        else:
            if not streaming_only:
                _check_lifelong(copy, entry.identity.lifelong)
            entries.move_to_end(message_id)
        self.updates += 1
        accepted = entry.accepted
        now = time.monotonic()
        accepted.last_touch = now
        if accepted.pending is None:
            accepted.dirty_since = now
        else:
            self.coalesced += 1
        accepted.pending = copy
        accepted.count += 1
        entry.refusal.error = None
        self.dirty[message_id] = entry
        marks = accepted.marks
        if marks is None or not streaming_only:
            marks = accepted.marks = marks_of(copy)
        return entry, marks.is_terminal_after(entry.written.marks)

    # -- writing -----------------------------------------------------------------------------

    def ready(self, now: float | None = None) -> list[Entry]:
        """Dirty entries with no write in flight (what a tick writes); with ``now``, not
        those whose refused state waits for its own retry time."""
        if now is None:
            return [e for e in self.dirty.values() if e.written.in_flight is None]
        return [
            e
            for e in self.dirty.values()
            if e.written.in_flight is None and e.refusal.retry_at <= now
        ]

    def next_retry(self) -> float | None:
        """The earliest retry time of a refused state waiting for one, if any."""
        waiting = [
            e.refusal.retry_at
            for e in self.dirty.values()
            if e.written.in_flight is None and e.refusal.retry_at
        ]
        return min(waiting, default=None)

    def take(self, entries: Iterable[Entry]) -> Batch:
        """Move the entries' pending states into a new batch and mark them in flight."""
        batch = Batch()
        now = utc_now()
        for entry in entries:
            accepted, written, stored = entry.accepted, entry.written, entry.stored
            state = accepted.pending
            if state is None or entry.deleting:
                continue
            state.updated_at = now
            batch.entries.append(entry)
            batch.states.append(state)
            batch.seen.append(accepted.count)
            batch.ages.append(accepted.dirty_since)
            # Appends need the stored state; with another write of this id in flight (or its
            # row's lifelong fields unchecked) it is not known: write it whole.
            known = written.in_flight is None and entry.identity.verified and self.appends
            batch.items.append(
                WriteItem(
                    state,
                    written.state if known else None,
                    stored.seq,
                    stored.streaming,
                    stored.appended,
                    stored.ticks,
                    stored.base,
                )
            )
            if not entry.identity.verified:
                batch.verify.add(entry.id)
            accepted.pending = None
            written.in_flight = batch
            written.taken = accepted.count
            self.dirty.pop(entry.id, None)
        return batch

    def committed(self, batch: Batch, result: WriteResult) -> Settled:
        """Record a committed batch; return what to announce. The states are the buffer's own
        (now their entries' written ones): whoever publishes them publishes copies.

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
            written = entry.written
            if written.in_flight is batch:
                written.in_flight = None
            if lifelong and entry.id in lifelong:
                entry.identity.lifelong, entry.identity.verified = lifelong[entry.id], True
            if entry.id in refused:
                settled.refused[entry.id] = refused[entry.id]
                entry.refusal.error = refused[entry.id]
                if lifelong_of(state) != entry.identity.lifelong:
                    continue  # it changes what the row keeps for life: never writable
                self._put_back(entry, state, seen)
                continue
            written.durable = max(written.durable, seen)
            entry.refusal.refusals, entry.refusal.retry_at = 0, 0.0
            if entry.id in gone:
                if not entry.deleting:  # else this store deleted it: nothing to report
                    settled.missing.append(entry.id)
                    entry.vanished = True
                self.forget(entry)
                continue
            settled.staleness.append(committed_at - age)
            stored = result.items[entry.id]
            state.revision = stored.revision
            entry.stored.record(stored)
            marks = marks_of(state)
            terminal = marks.is_terminal_after(written.marks)
            written.state, written.marks = state, marks
            if entry.deleting:
                continue
            settled.announced.append((state, terminal))
            if marks.finished and entry.clean:
                self._release(entry)
        return settled

    def restore(self, batch: Batch) -> None:
        """The write did not happen: put its snapshots back (unless superseded)."""
        for entry, state, seen in zip(batch.entries, batch.states, batch.seen, strict=True):
            if entry.written.in_flight is batch:
                entry.written.in_flight = None
            self._put_back(entry, state, seen)

    def _put_back(self, entry: Entry, state: Message, seen: int) -> None:
        """Make ``state`` pending again, unless something newer replaced it: a newer change
        (pending), or a newer snapshot already taken by a later write (which, queued behind
        this one, will write it — or put it back itself if it fails too)."""
        if entry.deleting or seen < entry.written.taken:
            return
        if entry.accepted.pending is None:
            entry.accepted.pending = state
        self.dirty.setdefault(entry.id, entry)

    # -- deleting ----------------------------------------------------------------------------

    def begin_delete(self, is_target: Callable[[Entry], bool]) -> list[Entry]:
        """Refuse updates to the matching entries from now on and drop what they had pending."""
        targets = [e for e in self.entries.values() if is_target(e)]
        for entry in targets:
            entry.deleting = True
            entry.accepted.pending = None
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
        entry.accepted.pending = None
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
        self._released[entry.id] = entry.identity.lifelong
        if len(self._released) > _TOMBSTONES:
            self._released.popitem(last=False)

    # -- memory ------------------------------------------------------------------------------

    def release_idle(self, now: float) -> None:
        """Release clean entries untouched for ``idle_release`` seconds."""
        cutoff = now - self.idle_release
        for entry in list(self.entries.values()):
            if entry.accepted.last_touch > cutoff:
                break
            if entry.clean:
                self._release(entry)

    def release_clean(self, entry: Entry) -> None:
        """Release ``entry`` now if it holds nothing pending or in flight (no debouncing)."""
        if entry.clean:
            self._release(entry)

    def unwritten_ids(self) -> frozenset[str]:
        """The ids with a change pending or in flight."""
        return frozenset(
            e.id
            for e in self.entries.values()
            if e.accepted.pending is not None or e.written.in_flight is not None
        )

    @property
    def pending_count(self) -> int:
        """Messages with a change not yet durable.

        Safe to read from another thread (a metrics reader): ``list()`` of the entries runs
        without releasing the GIL, so the dict cannot change under the count.
        """
        return sum(1 for e in list(self.entries.values()) if e.accepted.pending is not None)

    @property
    def entry_count(self) -> int:
        """Messages the buffer holds state for (pending or recently written)."""
        return len(self.entries)


def _check_lifelong(after: Message, known: Lifelong) -> None:
    error = changed_lifelong(after, known)
    if error is not None:
        raise error
