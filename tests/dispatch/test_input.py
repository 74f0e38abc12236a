"""What happens to input: modes, the cap and its drop policies, keys, routes, bad input,
and input submitted where no dispatcher runs. SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import math

import pytest

from messagestore import (
    InvalidMessage,
    QueueFull,
    SessionNotFound,
    Store,
)
from messagestore.dispatch import (
    Dispatcher,
    DropPolicy,
    QueueConfig,
    QueueMode,
    Turn,
    TurnOutcome,
    inputs_dropped,
)
from tests.support.dispatch_helpers import WAIT, Agent, input_count, outcomes

FAST = QueueConfig(debounce=0.01, max_wait=0.5)


def config(**changes: object) -> QueueConfig:
    values: dict[str, object] = {"debounce": 0.01, "max_wait": 0.5} | changes
    return QueueConfig(**values)  # type: ignore[arg-type]


# -- modes ------------------------------------------------------------------------------------


async def test_interrupt_cancels_the_turn_drops_pending_and_runs_the_new_input(
    store: Store,
) -> None:
    agent = Agent(hold=True)
    session = await store.sessions.create("interrupt")
    dropped: list[tuple[str, str]] = []

    def on_drop(sender: object, **kwargs: object) -> None:
        dropped.append((str(kwargs["outcome"]), str(kwargs["reason"])))

    inputs_dropped.connect(on_drop)
    try:
        async with Dispatcher(store, agent, config(mode=QueueMode.INTERRUPT)) as dispatcher:
            first = await dispatcher.submit(session.id, "first")
            await agent.next_turn()
            # Hold the second one back from its own turn: submit it through a dispatcher
            # that does not run turns, so it is pending when the interrupt arrives.
            web = Dispatcher(store, agent, config(mode=QueueMode.INTERRUPT))
            waiting = await web.submit(session.id, "waiting")
            now = await dispatcher.submit(session.id, "stop, do this instead")
            assert await outcomes(first, waiting) == ["cancelled", "dropped"]
            agent.release()
            assert await outcomes(now) == ["completed"]
    finally:
        inputs_dropped.disconnect(on_drop)
    assert agent.texts() == ["first", "stop, do this instead"]
    assert dropped == [("dropped", "interrupt")]


async def test_steer_hands_new_input_to_the_running_turn_and_leaves_the_rest(
    store: Store,
) -> None:
    arrived = asyncio.Event()
    steered: list[str] = []
    texts: list[str] = []
    started = asyncio.Event()

    async def run_turn(turn: Turn) -> None:
        texts.append(turn.text)
        if turn.text == "plan a trip":
            started.set()
            await asyncio.wait_for(arrived.wait(), WAIT)
            taken = await turn.steering()
            assert taken is not None
            steered.append(taken.text)
            assert taken.user_message.text == taken.text
            assert await turn.steering() is None  # nothing more waits now

    session = await store.sessions.create("steer")
    async with Dispatcher(store, run_turn, config(mode=QueueMode.STEER)) as dispatcher:
        first = await dispatcher.submit(session.id, "plan a trip")
        await asyncio.wait_for(started.wait(), WAIT)
        extra = [await dispatcher.submit(session.id, t) for t in ("by train", "in May")]
        arrived.set()
        assert await outcomes(first, *extra) == ["completed"] * 3
        later = await dispatcher.submit(session.id, "and back")
        assert await outcomes(later) == ["completed"]
        assert dispatcher.stats().inputs_steered == 2
    assert steered == ["by train\n\nin May"]
    assert texts == ["plan a trip", "and back"]
    users = await store.messages.list_user_messages(session.id)
    assert [m.text for m in users] == ["plan a trip", "by train\n\nin May", "and back"]


async def test_steering_outside_steer_mode_takes_nothing(store: Store) -> None:
    results: list[object] = []

    async def run_turn(turn: Turn) -> None:
        results.append(await turn.steering())

    session = await store.sessions.create("no steer")
    async with Dispatcher(store, run_turn, FAST) as dispatcher:
        assert await outcomes(await dispatcher.submit(session.id, "hi")) == ["completed"]
    assert results == [None]


# -- the cap ----------------------------------------------------------------------------------


async def _fill(
    store: Store, policy: DropPolicy, texts: list[str]
) -> tuple[Agent, Dispatcher, str, list[object]]:
    agent = Agent(hold=True)
    session = await store.sessions.create(f"cap {policy}")
    dispatcher = Dispatcher(store, agent, config(cap=2, drop=policy))
    await dispatcher.start()
    running = await dispatcher.submit(session.id, "busy")
    await agent.next_turn()
    receipts: list[object] = [running]
    for text in texts:
        receipts.append(await dispatcher.submit(session.id, text))
    return agent, dispatcher, session.id, receipts


async def test_cap_with_old_drops_the_oldest_pending(store: Store) -> None:
    agent, dispatcher, _, receipts = await _fill(store, DropPolicy.OLD, ["a", "b", "c"])
    agent.release()
    assert await outcomes(*receipts) == ["completed", "dropped", "completed", "completed"]
    assert agent.texts() == ["busy", "b\n\nc"]
    assert dispatcher.stats().dropped == 1
    await dispatcher.close()


async def test_cap_with_new_refuses_the_newcomer_and_stores_nothing(store: Store) -> None:
    agent, dispatcher, session_id, receipts = await _fill(store, DropPolicy.NEW, ["a", "b"])
    before = await input_count(store)
    with pytest.raises(QueueFull, match="cap") as refused:
        await dispatcher.submit(session_id, "c")
    assert await input_count(store) == before
    assert refused.value.receipt is not None
    assert await refused.value.receipt.outcome() is TurnOutcome.REJECTED
    agent.release()
    assert await outcomes(*receipts) == ["completed"] * 3
    assert agent.texts() == ["busy", "a\n\nb"]
    assert dispatcher.stats().rejected == 1
    await dispatcher.close()


async def test_cap_with_summarize_keeps_a_line_of_each_dropped_input(store: Store) -> None:
    texts = ["first idea\nwith details", "second idea", "third", "fourth"]
    agent, dispatcher, _, receipts = await _fill(store, DropPolicy.SUMMARIZE, texts)
    agent.release()
    assert await outcomes(*receipts) == [
        "completed",
        "dropped",
        "dropped",
        "completed",
        "completed",
    ]
    follow_up = agent.turns[1]
    assert follow_up.note.splitlines() == [
        "[2 earlier messages dropped (queue full); first lines:]",
        "- first idea",
        "- second idea",
    ]
    assert follow_up.text == follow_up.note + "\n\nthird\n\nfourth"
    await dispatcher.close()


# -- keys, routes -------------------------------------------------------------------------------


async def test_a_redelivered_key_is_a_no_op(store: Store) -> None:
    agent = Agent()
    session = await store.sessions.create("keys")
    async with Dispatcher(store, agent, FAST) as dispatcher:
        first = await dispatcher.submit(session.id, "hello", key="slack:123")
        again = await dispatcher.submit(session.id, "hello", key="slack:123")
        assert again is first
        assert await outcomes(first) == ["completed"]
        late = await dispatcher.submit(session.id, "hello", key="slack:123")
        assert late.duplicate and late.id == first.id and late.result() is TurnOutcome.COMPLETED
        assert dispatcher.stats().duplicates == 2
    assert agent.texts() == ["hello"] and await input_count(store) == 1


async def test_route_maps_a_conversation_to_one_session_with_its_newest_delivery(
    store: Store,
) -> None:
    agent = Agent()
    async with Dispatcher(store, agent, FAST) as dispatcher:
        key = "slack:T1:C42:thread-7"
        session_id = await dispatcher.route(key, title="support", delivery={"channel": "C42"})
        assert (await store.sessions.get(session_id)).title == "support"
        assert await dispatcher.route(key, delivery={"channel": "C42", "ts": "2"}) == session_id
        assert await dispatcher.route(key) == session_id
        assert await dispatcher.delivery(session_id) == {"channel": "C42", "ts": "2"}
        other = await dispatcher.route("slack:T1:C43")
        assert other != session_id and await dispatcher.delivery(other) is None
        receipt = await dispatcher.submit(session_id, "hi")
        assert await outcomes(receipt) == ["completed"]
    assert agent.turns[0].delivery == {"channel": "C42", "ts": "2"}


async def test_concurrent_first_sights_of_a_key_agree_on_one_session(store: Store) -> None:
    dispatcher = Dispatcher(store, Agent())
    found = await asyncio.gather(*(dispatcher.route("peer:9") for _ in range(5)))
    assert len(set(found)) == 1
    assert [s.id for s in await store.sessions.list()] == [found[0]]


# -- durability without a running dispatcher -----------------------------------------------------


async def test_input_submitted_where_no_dispatcher_runs_is_run_by_one_that_starts(
    store: Store,
) -> None:
    session = await store.sessions.create("web worker")
    web = Dispatcher(store, Agent(), FAST, poll_interval=0.05, claim_ttl=1.0)
    receipts = [await web.submit(session.id, t) for t in ("one", "two")]
    agent = Agent()
    async with Dispatcher(store, agent, FAST):
        # The web worker's receipts resolve from the database.
        assert await outcomes(*receipts) == ["completed", "completed"]
    assert agent.texts() == ["one\n\ntwo"]


async def test_a_cancelled_submit_still_commits_and_the_input_runs(store: Store) -> None:
    agent = Agent()
    session = await store.sessions.create("cancelled caller")
    async with Dispatcher(store, agent, FAST, poll_interval=0.05, claim_ttl=1.0) as dispatcher:
        task = asyncio.create_task(dispatcher.submit(session.id, "sent anyway"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The transaction had begun: it commits, and a poll finds the input.
        await agent.next_turn()
    assert agent.texts() == ["sent anyway"]
    assert await input_count(store) == 1


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("", InvalidMessage, "empty"),
        ("  \n\t", InvalidMessage, "empty"),
        ("x" * (1024 * 1024 + 1), InvalidMessage, "limit"),
        (b"bytes", InvalidMessage, "must be a str"),
        (None, InvalidMessage, "must be a str"),
    ],
)
async def test_bad_text_is_refused_and_nothing_is_stored(
    store: Store, text: object, error: type[Exception], match: str
) -> None:
    session = await store.sessions.create("bad")
    dispatcher = Dispatcher(store, Agent())
    with pytest.raises(error, match=match):
        await dispatcher.submit(session.id, text)  # type: ignore[arg-type]
    assert await input_count(store) == 0


async def test_bad_keys_metadata_and_sessions_are_refused(store: Store) -> None:
    session = await store.sessions.create("bad")
    dispatcher = Dispatcher(store, Agent())
    for key in ("", "nul\x00", 5):
        with pytest.raises(InvalidMessage, match="key"):
            await dispatcher.submit(session.id, "hi", key=key)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="metadata"):
        await dispatcher.submit(session.id, "hi", metadata={"when": object()})
    with pytest.raises(InvalidMessage, match="metadata"):
        await dispatcher.submit(session.id, "hi", metadata=["not", "a", "mapping"])  # type: ignore[arg-type]
    for missing in ("no-such-session", "nul\x00id", ""):
        with pytest.raises(SessionNotFound):
            await dispatcher.submit(missing, "hi")
        with pytest.raises(SessionNotFound):
            await dispatcher.stop(missing)
    with pytest.raises(InvalidMessage, match="routing key"):
        await dispatcher.route("")
    with pytest.raises(InvalidMessage, match="delivery"):
        await dispatcher.route("k", delivery={"x": {1, 2}})
    assert await input_count(store) == 0 and await store.sessions.list() == [session]


async def test_any_text_round_trips_through_the_input_table(store: Store) -> None:
    agent = Agent()
    session = await store.sessions.create("odd text")
    odd = "nul \x00, lone surrogate \ud800, emoji 🙂, quotes \"'"
    async with Dispatcher(store, agent, FAST) as dispatcher:
        receipt = await dispatcher.submit(session.id, odd, metadata={"odd": odd})
        assert await outcomes(receipt) == ["completed"]
    (turn,) = agent.turns
    assert turn.text == odd and turn.inputs[0].metadata == {"odd": odd}


def test_bad_construction_is_refused(store: Store) -> None:
    with pytest.raises(TypeError, match="run_turn"):
        Dispatcher(store, "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="QueueConfig"):
        Dispatcher(store, Agent(), {"mode": "collect"})  # type: ignore[arg-type]
    for kwargs, match in (
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": math.inf}, "poll_interval"),
        ({"max_turns": 0}, "max_turns"),
        ({"max_turns": True}, "max_turns"),
        ({"claim_ttl": 0.1, "poll_interval": 0.4}, "claim_ttl"),
    ):
        with pytest.raises(ValueError, match=match):
            Dispatcher(store, Agent(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "shout"}, "mode"),
        ({"drop": "random"}, "drop"),
        ({"debounce": -1}, "debounce"),
        ({"debounce": math.nan}, "debounce"),
        ({"debounce": 2.0, "max_wait": 1.0}, "max_wait"),
        ({"cap": 0}, "cap"),
        ({"cap": 2.5}, "cap"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 2}, "QUEUE"),
    ],
)
def test_impossible_queue_configs_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QueueConfig(**kwargs)  # type: ignore[arg-type]


def test_followup_is_queue_and_strings_are_accepted() -> None:
    assert QueueMode["FOLLOWUP"] is QueueMode.QUEUE
    made = QueueConfig(mode="queue", drop="summarize", max_concurrent=2)  # type: ignore[arg-type]
    assert made.mode is QueueMode.QUEUE and made.drop is DropPolicy.SUMMARIZE
