"""A store called from an event loop or thread that is not its own.

The core refuses at once (``WrongEventLoop``), before anything is buffered or handed to the
database, so a refused write never commits. The adapters instead run their work on the store's
loop: ``MessageStoreSession`` works under ``Runner.run_sync``, from thread pools and from a
second loop, as the SDK's own sessions do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest

from messagestore import (
    MessageStoreError,
    Role,
    Store,
    StoreClosed,
    Text,
    WrongEventLoop,
    open_store,
)
from messagestore.dispatch import Dispatcher
from messagestore.testing import faults

WAIT = 10.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with open_store(db_url) as opened:
        yield opened


def in_another_loop(call: Callable[[], Awaitable[Any]]) -> BaseException | None:
    """Await ``call()`` in a fresh event loop in a thread of its own; what it raised."""
    caught: list[BaseException | None] = [None]

    def run() -> None:
        async def main() -> None:
            await call()

        try:
            asyncio.run(main())
        except BaseException as exc:
            caught[0] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    return caught[0]


async def refused(call: Callable[[], Awaitable[Any]]) -> WrongEventLoop:
    error = await asyncio.to_thread(in_another_loop, call)
    assert isinstance(error, WrongEventLoop), repr(error)
    return error


async def test_every_write_from_another_loop_is_refused_and_nothing_commits(
    store: Store,
) -> None:
    session = await store.sessions.create("home")
    message = await store.messages.create(session.id, role=Role.ASSISTANT, parts=[Text("a")])
    before = await store.messages.snapshot()
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "MessageService.create()": lambda: store.messages.create(session.id, role=Role.USER),
        "MessageService.delete()": lambda: store.messages.delete(message.id),
        "MessageService.delete_session_messages()": lambda: store.messages.delete_session_messages(
            session.id
        ),
        "MessageService.flush()": lambda: store.messages.flush(message.id),
        "MessageService.flush_all()": lambda: store.messages.flush_all(),
        "SessionService.create()": lambda: store.sessions.create("elsewhere"),
        "SessionService.save()": lambda: store.sessions.save(session),
        "SessionService.delete()": lambda: store.sessions.delete(session.id),
        "Store.recover()": lambda: store.recover(),
        "Store.close()": lambda: store.close(),
    }
    for name, call in calls.items():
        error = await refused(call)
        assert error.call == name
    after = await store.messages.snapshot()
    assert after.revision == before.revision  # nothing was committed
    assert [m.id for m in after.messages] == [m.id for m in before.messages]
    assert [s.id for s in await store.sessions.list()] == [session.id]
    assert not store.closed


async def test_every_read_from_another_loop_is_refused(store: Store) -> None:
    session = await store.sessions.create("reads")
    message = await store.messages.create(session.id, role=Role.USER)
    for call in (
        lambda: store.messages.get(message.id),
        lambda: store.messages.list(session.id),
        lambda: store.messages.list_user_messages(session.id),
        lambda: store.messages.list_all_user_messages(),
        lambda: store.messages.snapshot(),
        lambda: store.sessions.get(session.id),
        lambda: store.sessions.list(),
    ):
        await refused(call)


async def test_update_from_another_loop_is_refused_before_the_buffer(store: Store) -> None:
    session = await store.sessions.create("update")
    message = await store.messages.create(session.id, role=Role.ASSISTANT)
    accepted = store.messages.stats().updates_accepted
    message.append_text("from elsewhere")
    error = await refused(lambda: store.messages.update(message))
    assert error.call == "MessageService.update()"
    stats = store.messages.stats()
    assert (stats.updates_accepted, stats.pending_messages) == (accepted, 0)
    await store.messages.update(message)  # from its own loop: accepted
    await store.messages.flush(message.id)
    assert (await store.messages.get(message.id)).text == "from elsewhere"


async def test_a_thread_without_a_loop_is_refused(store: Store) -> None:
    def subscribe() -> object:
        return store.messages.subscribe()

    with pytest.raises(WrongEventLoop, match="outside the store's event loop"):
        await asyncio.to_thread(subscribe)
    with pytest.raises(WrongEventLoop):
        await asyncio.to_thread(store.sessions.subscribe)
    store.messages.stats()  # counters may be read from any thread
    await asyncio.to_thread(store.messages.stats)


async def test_the_error_names_the_problem_and_the_remedies(store: Store) -> None:
    error = await refused(lambda: store.sessions.list())
    assert isinstance(error, MessageStoreError)
    assert isinstance(error, RuntimeError)
    text = str(error)
    assert "SessionService.list() was called from an event loop that is not the store's" in text
    for remedy in ("messagestore.sync", "adapter", "asyncio.run_coroutine_threadsafe"):
        assert remedy in text


async def test_the_remedy_works(store: Store) -> None:
    loop = asyncio.get_running_loop()

    def from_a_thread() -> str:
        future = asyncio.run_coroutine_threadsafe(store.sessions.create("scheduled"), store.loop)
        return future.result(WAIT).id

    assert store.loop is loop
    created = await asyncio.to_thread(from_a_thread)
    assert (await store.sessions.get(created)).title == "scheduled"


def test_a_store_used_after_its_loop_stopped_in_the_same_thread(sqlite_url: str) -> None:
    """A second loop in the same thread (two ``asyncio.run`` calls, say) is refused too."""
    first = asyncio.new_event_loop()
    try:
        store = first.run_until_complete(_open(sqlite_url))
        with pytest.raises(WrongEventLoop):
            asyncio.run(store.sessions.list())
        first.run_until_complete(store.close())
    finally:
        first.close()


async def _open(url: str) -> Store:
    return await open_store(url)


async def test_the_dispatcher_refuses_another_loop(store: Store) -> None:
    async def run_turn(turn: object) -> None:
        return None

    session = await store.sessions.create("dispatch")
    dispatcher = Dispatcher(store, run_turn)
    before = await store.messages.snapshot()
    error = await refused(lambda: dispatcher.submit(session.id, "hi"))
    assert error.call == "Dispatcher.submit()"
    await refused(lambda: dispatcher.route("elsewhere"))
    await refused(dispatcher.start)
    assert (await store.messages.snapshot()).revision == before.revision
    await dispatcher.close()


async def test_the_database_refuses_another_loop(store: Store) -> None:
    def job(connection: object) -> int:
        return 1

    with pytest.raises(WrongEventLoop):
        await asyncio.to_thread(store._database.submit_write, cast(Any, job))


# -- the OpenAI Agents SDK session, from anywhere --------------------------------------------------


agents = pytest.importorskip("agents")
from agents import Agent, Runner, set_tracing_disabled  # noqa: E402
from agents.testing import ScriptedModel, assistant_message  # noqa: E402

from messagestore.adapters.openai_agents import MessageStoreSession  # noqa: E402

set_tracing_disabled(True)  # offline: no trace export


def item(text: str) -> Any:
    return {"role": "user", "content": text}


async def test_session_under_run_sync_in_a_thread(store: Store) -> None:
    session = MessageStoreSession("run_sync", store)
    model = ScriptedModel([[assistant_message("one")], [assistant_message("two")]])
    agent = Agent(name="a", model=model)

    def run(text: str) -> Any:  # as a web server's worker thread would: a loop of its own
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return Runner.run_sync(agent, text, session=session)
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    assert (await asyncio.to_thread(run, "first")).final_output == "one"
    assert (await asyncio.to_thread(run, "second")).final_output == "two"
    contents = [i.get("content") for i in await session.get_items()]
    assert contents[0] == "first"
    assert len(contents) == 4


@contextmanager
def store_in_a_thread(url: str) -> Iterator[Store]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="store-loop")
    thread.start()
    try:
        store = asyncio.run_coroutine_threadsafe(_open(url), loop).result(WAIT)
        try:
            yield store
        finally:
            asyncio.run_coroutine_threadsafe(store.close(), loop).result(WAIT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def test_session_from_a_thread_pool_each_with_its_own_loop(db_url: str) -> None:
    with store_in_a_thread(db_url) as store:
        session = MessageStoreSession("pool", store)

        def add(n: int) -> None:
            asyncio.run(session.add_items([item(f"m{n}")]))

        with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
            list(pool.map(add, range(10)))
        items = asyncio.run(session.get_items())
        assert sorted(i["content"] for i in items) == sorted(f"m{n}" for n in range(10))
        assert asyncio.run(session.pop_item()) is not None
        asyncio.run(session.clear_session())
        assert asyncio.run(session.get_items()) == []


async def test_session_from_a_second_loop(store: Store) -> None:
    session = MessageStoreSession("second", store)
    await session.add_items([item("here")])

    def elsewhere() -> list[Any]:
        async def main() -> list[Any]:
            await session.add_items([item("there")])
            return await session.get_items()

        return asyncio.run(main())

    items = await asyncio.to_thread(elsewhere)
    assert [i["content"] for i in items] == ["here", "there"]


def test_session_refuses_a_store_loop_that_is_not_running(sqlite_url: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        store = loop.run_until_complete(_open(sqlite_url))
        session = MessageStoreSession("stopped", store)
        with pytest.raises(WrongEventLoop, match="not running"):
            asyncio.run(session.add_items([item("x")]))
        assert loop.run_until_complete(session.get_items()) == []  # nothing was stored
        loop.run_until_complete(store.close())
    finally:
        loop.close()


async def test_a_cancelled_add_from_another_loop_waits_for_its_outcome(store: Store) -> None:
    """Cancelled twice while its write is held: the caller learns of the cancellation only
    once the write committed, so it never retries a write that happened."""
    session = MessageStoreSession("cancelled", store)
    await session.add_items([item("before")])
    stall = faults(store).stall_next(kind="write")
    outcome: concurrent.futures.Future[str] = concurrent.futures.Future()
    held = threading.Event()

    def elsewhere() -> None:
        async def main() -> None:
            task = asyncio.create_task(session.add_items([item("once")]))
            assert await asyncio.to_thread(held.wait, WAIT)
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.sleep(0.05)
            outcome.set_result("done" if task.done() else "waiting")
            try:
                await task
            except asyncio.CancelledError:
                return
            raise AssertionError("not cancelled")

        asyncio.run(asyncio.wait_for(main(), WAIT))

    thread = asyncio.create_task(asyncio.to_thread(elsewhere))
    async with asyncio.timeout(WAIT):
        await stall.started()
        held.set()
        assert await asyncio.wrap_future(outcome) == "waiting"  # held: the caller still waits
        stall.release()
        await thread
    assert [i["content"] for i in await session.get_items()] == ["before", "once"]


async def test_unknown_session_settings_raise_type_error(store: Store) -> None:
    with pytest.raises(TypeError, match="Unknown session settings: limitt"):
        MessageStoreSession("typo", store, session_settings={"limitt": 1})
    assert MessageStoreSession("ok", store, session_settings={"limit": 2}).session_settings


async def test_an_empty_add_on_a_closed_store_is_refused(db_url: str) -> None:
    store = await open_store(db_url)
    session = MessageStoreSession("closed", store)
    await store.close()
    with pytest.raises(StoreClosed):
        await session.add_items([])
