"""``messagestore demo``: simulated agents stream into a store while a subscriber plays the UI.

It subscribes a UI task before anything streams, runs the shared workload
(``messagestore._demo``; with ``--users N`` also users and a dispatcher), flushes, verifies
every message in the database, closes the store, compares the UI's last states with the
database and prints the report (``--json``: only the report, as JSON). Exit status: 0; 1 if
verification found a stored message incomplete; 130 after Ctrl-C (the first one still
finishes, flushes, verifies and reports). In full: docs/MODULES.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text as RichText

from pubsub import EventType

from .. import FeedSubscription, Message, Role, Store, batch_written
from .._demo import (
    StreamStats,
    UserConfig,
    UserResult,
    WorkloadConfig,
    WorkloadResult,
    run_users,
    run_workload,
    toy_agent,
)
from ..dispatch import Dispatcher, DropPolicy, QueueConfig, QueueMode
from ._common import Target, open_cli_store

__all__ = ["DemoOptions", "run_demo"]

EXIT_INTERRUPTED = 130
_LIVE_INTERVAL = 0.25
_PLAIN_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The demo's knobs; ``rate`` is tokens (deltas) per second per session."""

    sessions: int = 5
    duration: float = 10.0
    rate: float = 30.0
    debounce: float = 0.033
    seed: int = 1
    ui_delay: float = 0.0
    json: bool = False
    users: int = 0
    queue_mode: str = "collect"
    window: float = 0.3
    cap: int = 10
    drop: str = "old"

    def queue_config(self) -> QueueConfig:
        """The dispatcher's configuration for the user side."""
        return QueueConfig(
            mode=QueueMode(self.queue_mode),
            debounce=self.window,
            max_wait=max(self.window, 2.0),
            cap=self.cap,
            drop=DropPolicy(self.drop),
        )


# -- the UI and the write log -------------------------------------------------------------


class _UI:
    """Plays the user interface: drains the subscription, keeps what it would render."""

    def __init__(self, subscription: FeedSubscription[Message], delay: float) -> None:
        self._subscription = subscription
        self._delay = delay
        self.received: Counter[str] = Counter()
        self.latest: dict[str, Message] = {}
        self.screen: dict[str, str] = {}  # session id -> what its streaming reply shows

    async def run(self) -> None:
        """Receive until the store closes (the broker lets it drain first)."""
        async for event in self._subscription:
            self.received[event.type.value] += 1
            message = event.payload
            if event.type is EventType.DELETED:
                self.latest.pop(message.id, None)
            else:
                self.latest[message.id] = message
                if message.role is Role.ASSISTANT:
                    shown = message.text or (
                        f"(thinking) {message.reasoning.thinking}" if message.reasoning else ""
                    )
                    self.screen[message.session_id] = shown
            if self._delay > 0:
                await asyncio.sleep(self._delay)  # a slow redraw


@dataclass(slots=True)
class _WriteLog:
    """``batch_written`` receiver: per-row staleness of every committed batch."""

    batches: int = 0
    rows: int = 0
    staleness: list[float] = field(default_factory=list)

    def __call__(self, sender: object, **kwargs: Any) -> None:
        self.batches += 1
        self.rows += kwargs["rows"]
        self.staleness.extend(kwargs["staleness"])


# -- progress -----------------------------------------------------------------------------


class _Progress:
    """Live rich display on a terminal, a plain line every few seconds elsewhere, or nothing."""

    def __init__(self, store: Store, ui: _UI, options: DemoOptions, target: Target) -> None:
        self._store = store
        self._ui = ui
        self._options = options
        self._target = target
        self._console = Console(stderr=True, highlight=False)
        self._enabled = not options.json
        self._live: Live | None = None
        self._started = time.monotonic()
        self._next = 0.0
        self._sessions: list[str] = []
        self.dispatcher: Dispatcher | None = None

    def __enter__(self) -> _Progress:
        self._started = time.monotonic()
        if self._enabled and self._console.is_terminal:
            self._live = Live(
                self._render(),
                console=self._console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def note(self, text: str) -> None:
        """A one-off line on stderr (shown even with ``--json``: stdout stays clean)."""
        self._console.print(RichText(text, style="yellow"))

    def tick(self, _stats: StreamStats) -> None:
        """Called by the workload driver after every tick; redraws at a bounded rate."""
        if not self._enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        if self._live is not None:
            self._next = now + _LIVE_INTERVAL
            self._live.update(self._render(), refresh=True)
        else:
            first = self._next == 0.0
            self._next = now + _PLAIN_INTERVAL
            if not first:
                print(self._plain(now), file=sys.stderr, flush=True)

    def _plain(self, now: float) -> str:
        stats = self._store.messages.stats()
        line = (
            f"demo: {now - self._started:5.1f} s  deltas {stats.updates_accepted:,}  "
            f"rows {stats.rows_written:,}  transactions {stats.transactions:,}  "
            f"UI events {sum(self._ui.received.values()):,}"
        )
        if self.dispatcher is not None:
            d = self.dispatcher.stats()
            line += f"  user inputs {d.inputs_submitted:,}  turns {d.turns_started:,}"
        return line

    def _render(self) -> Group:
        options = self._options
        elapsed = min(time.monotonic() - self._started, options.duration)
        stats = self._store.messages.stats()
        head = Table.grid(padding=(0, 1))
        head.add_row(
            RichText(f"{options.sessions} simulated agents → {self._target.where}", style="bold"),
            ProgressBar(total=options.duration, completed=elapsed, width=24),
            f"{elapsed:4.1f} / {options.duration:g} s",
        )
        numbers = Table.grid(padding=(0, 2))
        reduction = _ratio(stats.updates_accepted, stats.rows_written)
        numbers.add_row(
            f"deltas {stats.updates_accepted:,}",
            f"rows written {stats.rows_written:,}"
            + (f" ({reduction:.1f} deltas per row)" if reduction else ""),
            f"transactions {stats.transactions:,}",
        )
        broker = stats.broker
        numbers.add_row(
            f"UI events {sum(self._ui.received.values()):,}",
            f"conflated {broker.conflated:,}",
            f"dropped {broker.dropped + broker.must_deliver_dropped:,}",
        )
        if self.dispatcher is not None:
            d = self.dispatcher.stats()
            numbers.add_row(
                f"user inputs {d.inputs_submitted:,}",
                f"turns {d.turns_started:,} (coalesced {d.inputs_coalesced:,})",
                f"dropped {d.dropped + d.rejected:,}",
            )
        screen = Table.grid(padding=(0, 1))
        for session_id in self._ui.screen:
            if session_id not in self._sessions:
                self._sessions.append(session_id)
        width = max(20, self._console.width - 12)
        for index, session_id in enumerate(self._sessions[:8], start=1):
            shown = " ".join(self._ui.screen.get(session_id, "").split())
            if len(shown) > width:
                shown = "…" + shown[-(width - 1) :]
            screen.add_row(RichText(f"agent {index}", style="dim"), RichText(shown))
        return Group(head, numbers, screen)


# -- verification -------------------------------------------------------------------------


@dataclass(slots=True)
class _Verification:
    """What reading the demo's sessions back found."""

    stored: dict[str, Message]
    finished: int
    complete: int
    problems: list[str]
    ui_matches: int = 0


async def _verify(
    store: Store, result: WorkloadResult, users: _UserSide | None = None
) -> _Verification:
    stored: dict[str, Message] = {}
    for session_id in result.session_ids:
        for message in await store.messages.list(session_id):
            stored[message.id] = message
    problems: list[str] = []
    finished_ids = set(result.stats.finished_ids)
    complete = 0
    for message_id in sorted(finished_ids):
        found = stored.get(message_id)
        if found is None:
            problems.append(f"finished message {message_id} is not in the database")
        elif not found.is_finished:
            problems.append(f"message {message_id} finished but is stored without its finish")
        elif any(not call.finished for call in found.tool_calls):
            problems.append(f"message {message_id} is stored with an unfinished tool call")
        else:
            complete += 1
    results = {r.tool_call_id for m in stored.values() for r in m.tool_results}
    for message in stored.values():
        if message.role is Role.ASSISTANT and not message.is_finished:
            problems.append(f"assistant message {message.id} is stored without a finish")
        for call in message.tool_calls:
            if call.id not in results:
                problems.append(f"tool call {call.id} of {message.id} has no stored result")
    if users is not None:
        problems.extend(await users.verify())
    return _Verification(stored, len(finished_ids), complete, problems)


# -- the user side ------------------------------------------------------------------------


class _UserSide:
    """Simulated users talking to a toy agent through a ``Dispatcher`` (``--users``)."""

    def __init__(self, store: Store, options: DemoOptions, stop: asyncio.Event) -> None:
        self._store = store
        self._options = options
        self._stop = stop
        self.dispatcher = Dispatcher(
            store, toy_agent(rate=options.rate * 4), options.queue_config()
        )
        self._task: asyncio.Task[UserResult] | None = None
        self.result: UserResult | None = None

    async def start(self) -> None:
        await self.dispatcher.start()
        config = UserConfig(
            users=self._options.users, duration=self._options.duration, seed=self._options.seed
        )
        work = run_users(self._store, self.dispatcher, config, stop=self._stop)
        self._task = asyncio.get_running_loop().create_task(work, name="messagestore-demo-users")

    async def finish(self) -> None:
        """Wait until the users are done and their input has an outcome."""
        assert self._task is not None
        self.result = await self._task

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.dispatcher.close()

    async def verify(self) -> list[str]:
        problems: list[str] = []
        result = self.result
        if result is None:
            return ["the simulated users did not finish"]
        if result.unresolved:
            problems.append(f"{result.unresolved} user input(s) have no outcome")
        for session_id in result.session_ids:
            for message in await self._store.messages.list(session_id):
                if message.role is Role.ASSISTANT and not message.is_finished:
                    problems.append(f"reply {message.id} to a user is stored without a finish")
        return problems

    def report(self) -> dict[str, Any]:
        result = self.result or UserResult()
        stats = self.dispatcher.stats()
        config = self.dispatcher.config
        latency = result.latencies
        return {
            "users": self._options.users,
            "mode": config.mode.value,
            "window_ms": round(config.debounce * 1000, 3),
            "cap": config.cap,
            "drop": config.drop.value,
            "session_ids": result.session_ids,
            "inputs": len(result.receipts),
            "turns": stats.turns_started,
            "inputs_coalesced": stats.inputs_coalesced,
            "dropped": stats.dropped,
            "rejected": stats.rejected,
            "outcomes": dict(sorted(result.outcomes.items())),
            "latency_ms": {
                "turns": len(latency),
                "p50": _ms(_percentile(latency, 0.50)),
                "p99": _ms(_percentile(latency, 0.99)),
                "max": _ms(max(latency, default=None)),
            },
        }


# -- the run ------------------------------------------------------------------------------


async def run_demo(target: Target, options: DemoOptions, out: TextIO) -> int:
    """Run the demo against ``target``, print the report to ``out``; return the exit status."""
    config = WorkloadConfig(
        streams=options.sessions, duration=options.duration, rate=options.rate, seed=options.seed
    )
    store = await open_cli_store(target, debounce=options.debounce)
    ui = _UI(store.messages.subscribe(), options.ui_delay)
    ui_task = asyncio.get_running_loop().create_task(ui.run(), name="messagestore-demo-ui")
    writes = _WriteLog()
    batch_written.connect(writes, weak=False)
    stop = asyncio.Event()
    progress = _Progress(store, ui, options, target)
    remove_handler = _on_interrupt(stop, progress)
    users: _UserSide | None = None
    try:
        if options.users:
            users = _UserSide(store, options, stop)
            await users.start()
            progress.dispatcher = users.dispatcher
        with progress:
            result = await run_workload(store, config, stop=stop, on_tick=progress.tick)
            if users is not None:
                await users.finish()
        if stop.is_set():
            progress.note("stopped: every open message got its finish; flushing")
        await store.messages.flush_all()
        verification = await _verify(store, result, users)
    finally:
        if users is not None:
            await users.close()
        try:
            await store.close()  # shuts the broker down: the UI drains, then its loop ends
        finally:
            try:
                await asyncio.wait_for(ui_task, timeout=10)  # cancels and awaits on timeout
            finally:
                batch_written.disconnect(writes)
                remove_handler()
    verification.ui_matches = sum(
        1
        for message in verification.stored.values()
        if (seen := ui.latest.get(message.id)) is not None and seen.parts == message.parts
    )
    report = _report(store, target, options, result, writes, ui, verification)
    if users is not None:
        report["users"] = users.report()
    if options.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_report(report, out)
    if verification.problems:
        more = len(verification.problems) - 1
        print(
            f"messagestore: error: verification failed: {verification.problems[0]}"
            + (f" (and {more} more)" if more else ""),
            file=sys.stderr,
        )
        return 1
    return EXIT_INTERRUPTED if result.interrupted else 0


def _on_interrupt(stop: asyncio.Event, progress: _Progress) -> Callable[[], None]:
    """First SIGINT: stop streaming gracefully. Second: cancel the run. Returns an undo."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def interrupted() -> None:
        if not stop.is_set():
            stop.set()
            progress.note("interrupted: finishing open messages (Ctrl-C again to abort)")
        elif task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, interrupted)
    except (NotImplementedError, RuntimeError):  # no signal handlers here: plain Ctrl-C
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGINT)

    return remove


# -- the report ---------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _report(
    store: Store,
    target: Target,
    options: DemoOptions,
    result: WorkloadResult,
    writes: _WriteLog,
    ui: _UI,
    verification: _Verification,
) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints). Counters are the store's own."""
    stats = store.messages.stats()
    broker = stats.broker
    reduction = _ratio(stats.updates_accepted, stats.rows_written)
    per_transaction = _ratio(stats.updates_accepted, stats.transactions)
    return {
        "database": target.where,
        "url": target.display,
        "interrupted": result.interrupted,
        "settings": {
            "sessions": options.sessions,
            "duration": options.duration,
            "rate": options.rate,
            "debounce": options.debounce,
            "seed": options.seed,
            "ui_delay": options.ui_delay,
            "users": options.users,
        },
        "elapsed_seconds": round(result.elapsed, 3),
        "session_ids": result.session_ids,
        "deltas_accepted": stats.updates_accepted,
        "messages_created": result.stats.messages_created,
        "messages_finished": verification.finished,
        "transactions": stats.transactions,
        "rows_written": stats.rows_written,
        "bytes_written": stats.bytes_written,
        "terminal_writes": stats.terminal_writes,
        "write_failures": stats.write_failures,
        "write_reduction": None if reduction is None else round(reduction, 2),
        "transaction_reduction": None if per_transaction is None else round(per_transaction, 2),
        "events": {
            "published": broker.published,
            "delivered": broker.delivered,
            "conflated": broker.conflated,
            "dropped": broker.dropped,
            "must_deliver_dropped": broker.must_deliver_dropped,
            "received_by_ui": sum(ui.received.values()),
            "received_by_type": dict(sorted(ui.received.items())),
        },
        "staleness_ms": {
            "rows": len(writes.staleness),
            "p50": _ms(_percentile(writes.staleness, 0.50)),
            "p99": _ms(_percentile(writes.staleness, 0.99)),
            "max": _ms(max(writes.staleness, default=None)),
        },
        "verified": {
            "ok": not verification.problems,
            "finished_messages": verification.finished,
            "complete": verification.complete,
            "messages": len(verification.stored),
            "ui_matches": verification.ui_matches,
            "problems": verification.problems[:20],
        },
    }


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    """The human report: one line per figure, never wrapped (styled only on a terminal)."""
    console = Console(file=out, highlight=False, soft_wrap=True)
    s = report["settings"]
    events = report["events"]
    stale = report["staleness_ms"]
    verified = report["verified"]
    stopped = " (interrupted)" if report["interrupted"] else ""
    console.print(
        f"messagestore demo: {s['sessions']} agents, {report['elapsed_seconds']:.1f} s at "
        f"{s['rate']:g} tokens/s, debounce {s['debounce'] * 1000:g} ms{stopped}",
        style="bold",
    )

    def line(label: str, value: str, note: str = "", style: str = "") -> None:
        text = RichText()
        text.append(f"  {label:<19}", style="bold")
        text.append(f"{value:>11}", style=style)
        if note:
            text.append(f"  {note}", style="dim")
        console.print(text)

    def per(key: str, what: str) -> str:
        value = report[key]
        return "" if value is None else f"{value:.1f}x reduction ({what})"

    line("deltas accepted", f"{report['deltas_accepted']:,}", "update() calls")
    line("rows written", f"{report['rows_written']:,}", per("write_reduction", "deltas per row"))
    line(
        "transactions",
        f"{report['transactions']:,}",
        per("transaction_reduction", "deltas per transaction"),
    )
    line(
        "events delivered",
        f"{events['delivered']:,}",
        f"of {events['published']:,} published; conflated {events['conflated']:,}, "
        f"dropped {events['dropped']:,} + {events['must_deliver_dropped']:,} must-deliver",
    )
    if stale["rows"]:
        line(
            "staleness p50/p99",
            f"{stale['p50']:.1f}/{stale['p99']:.1f}",
            f"ms accepted → durable over {stale['rows']:,} rows (max {stale['max']:.1f} ms)",
        )
    users = report.get("users")
    if users:
        latency = users["latency_ms"]
        line(
            "user inputs",
            f"{users['inputs']:,}",
            f"from {users['users']} users -> {users['turns']:,} turns "
            f"({users['inputs_coalesced']:,} coalesced, {users['mode']} mode, "
            f"window {users['window_ms']:g} ms)",
        )
        line(
            "dropped by cap",
            f"{users['dropped'] + users['rejected']:,}",
            f"cap {users['cap']}, policy {users['drop']}; outcomes "
            + ", ".join(f"{k} {v:,}" for k, v in users["outcomes"].items()),
        )
        if latency["turns"]:
            line(
                "turn start p50/p99",
                f"{latency['p50']:.0f}/{latency['p99']:.0f}",
                f"ms from submit to turn start (max {latency['max']:.0f} ms)",
            )
    if verified["ok"]:
        line(
            "verified",
            "ok",
            f"{verified['complete']:,} finished messages complete in the database; "
            f"the UI's last state matches {verified['ui_matches']:,}/{verified['messages']:,}",
            style="green",
        )
    else:
        line("verified", "FAILED", "; ".join(verified["problems"][:3]), style="red")
    console.print(RichText(f"  {'database':<19}{'':>11}  {report['database']}"))
    console.print(
        "  see what was stored: messagestore sessions; messagestore show SESSION", style="dim"
    )
