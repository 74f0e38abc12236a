"""The user side of the demo: simulated users send bursts of messages through a
``Dispatcher`` while a toy agent streams its replies into the store.

Shared by ``messagestore demo --users N`` and the dispatcher benchmark (and meant for the HTTP
server's demo mode). Each user has a session and a script: a burst of 1 to 4 messages a few
hundred milliseconds apart — often while the agent is still answering the previous one —
then a pause to read. ``toy_agent`` is a ``run_turn`` that streams a reply word by word at a
set rate with ``update()`` and finishes it; a cancelled turn is finished by the dispatcher.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import FinishReason, QueueFull, Store
from ..dispatch import Dispatcher, Receipt, Turn, turn_started

__all__ = ["UserConfig", "UserResult", "run_users", "toy_agent"]

_OPENERS = (
    "can you look at",
    "also check",
    "wait, what about",
    "and then",
    "one more thing:",
    "actually,",
    "please summarize",
)
_TOPICS = ("the failing test", "the config file", "the logs", "the deploy", "the README")


def toy_agent(*, rate: float = 200.0, words: int = 24) -> Callable[[Turn], Awaitable[None]]:
    """A ``run_turn`` that streams a reply of ``words`` words at ``rate`` words per second."""

    async def run_turn(turn: Turn) -> None:
        reply = await turn.reply(model="toy-1", provider="demo")
        said = turn.text.replace("\n", " ").split()
        for i in range(words):
            reply.append_text((said[i % len(said)] if said else "ok") + " ")
            await turn.store.messages.update(reply)
            await asyncio.sleep(1 / rate)
        reply.add_finish(FinishReason.END_TURN)
        await turn.store.messages.update(reply)

    return run_turn


@dataclass(frozen=True, slots=True)
class UserConfig:
    """How the simulated users behave."""

    users: int = 3
    duration: float = 10.0
    burst: tuple[int, int] = (1, 4)
    gap: tuple[float, float] = (0.05, 0.4)  # seconds between messages of a burst
    pause: tuple[float, float] = (0.5, 2.5)  # seconds between bursts
    seed: int = 1

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be at least 1, not {self.users}")
        if not self.duration > 0:
            raise ValueError(f"duration must be positive, not {self.duration}")


@dataclass(slots=True)
class UserResult:
    """What the users sent and how it ended."""

    session_ids: list[str] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    unresolved: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, submit -> turn start
    turns: int = 0


async def run_users(
    store: Store,
    dispatcher: Dispatcher,
    config: UserConfig,
    *,
    stop: asyncio.Event | None = None,
    settle: float = 30.0,
) -> UserResult:
    """Let ``config.users`` users talk for ``config.duration`` seconds, then wait up to
    ``settle`` seconds for the outcome of everything they sent."""
    result = UserResult()
    own: set[str] = set()

    def on_start(sender: object, **kwargs: Any) -> None:
        if sender is dispatcher and kwargs["session_id"] in own:
            result.turns += 1
            result.latencies.extend(kwargs["latency"])

    turn_started.connect(on_start)
    try:
        for n in range(config.users):
            session = await store.sessions.create(f"simulated user {n + 1}")
            result.session_ids.append(session.id)
            own.add(session.id)
        rng = random.Random(config.seed)
        deadline = asyncio.get_running_loop().time() + config.duration
        stop = stop or asyncio.Event()
        await asyncio.gather(
            *(
                _user(dispatcher, sid, random.Random(rng.random()), config, deadline, stop, result)
                for sid in result.session_ids
            )
        )
        try:
            async with asyncio.timeout(settle):
                for receipt in result.receipts:
                    result.outcomes[str(await receipt.outcome())] += 1
        except TimeoutError:
            result.unresolved = sum(1 for r in result.receipts if not r.done())
    finally:
        turn_started.disconnect(on_start)
    return result


async def _user(
    dispatcher: Dispatcher,
    session_id: str,
    rng: random.Random,
    config: UserConfig,
    deadline: float,
    stop: asyncio.Event,
    result: UserResult,
) -> None:
    loop = asyncio.get_running_loop()
    sent = 0
    while not stop.is_set() and loop.time() < deadline:
        for _ in range(rng.randint(*config.burst)):
            sent += 1
            text = f"{rng.choice(_OPENERS)} {rng.choice(_TOPICS)} (#{sent})"
            try:
                result.receipts.append(await dispatcher.submit(session_id, text))
            except QueueFull as full:
                result.receipts.append(full.receipt)
            if await _pause(stop, rng.uniform(*config.gap)):
                return
        if await _pause(stop, rng.uniform(*config.pause)):
            return


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True if stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
