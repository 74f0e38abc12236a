"""The blocking twin (``messagestore.sync``): the asyncio store on a loop thread it owns.

Every test runs on SQLite and PostgreSQL (``db_url``) from plain threads: many threads at once,
a subscriber in another thread, errors that keep their type, a timeout or an interrupt that
cancels one call and leaves the store working, close() that joins the thread and leaks none,
calls after close and from the loop thread itself, exit without close(), fork.
"""

from __future__ import annotations

import gc
import inspect
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import messagestore
from messagestore import (
    FinishReason,
    InvalidMessage,
    Message,
    MessageNotFound,
    Role,
    SessionNotFound,
    StoreClosed,
    ToolCall,
    batch_written,
)
from messagestore.sync import (
    SyncMessageService,
    SyncSessionService,
    SyncStore,
    SyncSubscription,
    open_store,
)
from messagestore.testing import set_must_deliver_timeout
from pubsub import Event, EventType, SubscriptionEnded

WAIT = 30.0  # bound on every wait for another thread


@pytest.fixture
def store(db_url: str) -> Iterator[SyncStore]:
    with open_store(db_url) as opened:
        yield opened


def run_threads(count: int, target: Callable[[int], object]) -> None:
    """Run ``target(n)`` in ``count`` threads started together; raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(WAIT)
            target(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a worker thread did not finish"
    if errors:
        raise errors[0]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state that no event announces (used only where no event exists)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("messagestore-loop")]


# -- the surface ---------------------------------------------------------------------------------

# Public asyncio members with no blocking twin, and why.
NOT_MIRRORED = {
    (messagestore.Store, "engine"): "an AsyncEngine is bound to the store's loop",
    (messagestore.MessageService, "close"): "the store closes its services",
    (messagestore.MessageService, "delete_with_session"): "plumbing between the two services",
    (messagestore.SessionService, "close"): "the store closes its services",
    (messagestore.Store, "database"): "the job runner lives on the loop thread",
    (messagestore.Store, "loop"): "the loop thread's loop is the blocking store's own",
    (messagestore.Store, "feature_state"): "for layers built on an asyncio store",
}


@pytest.mark.parametrize(
    ("asyncio_class", "sync_class"),
    [
        (messagestore.Store, SyncStore),
        (messagestore.SessionService, SyncSessionService),
        (messagestore.MessageService, SyncMessageService),
    ],
)
def test_every_public_method_has_a_blocking_twin_with_its_parameters(
    asyncio_class: type, sync_class: type
) -> None:
    missing, different = [], []
    for name, member in vars(asyncio_class).items():
        if name.startswith("_") or (asyncio_class, name) in NOT_MIRRORED:
            continue
        twin = getattr(sync_class, name, None)
        if twin is None:
            missing.append(name)
        elif isinstance(member, property):
            assert isinstance(twin, property), name
        elif callable(member):
            expected = list(inspect.signature(member).parameters.values())
            got = list(inspect.signature(twin).parameters.values())
            if [(p.name, p.kind, p.default, p.annotation) for p in expected] != [
                (p.name, p.kind, p.default, p.annotation) for p in got
            ]:
                different.append(name)
    assert missing == [], f"no blocking twin in {sync_class.__name__}"
    assert different == [], "parameters differ from the asyncio method"


def test_open_store_takes_the_asyncio_arguments() -> None:
    expected = inspect.signature(messagestore.open_store).parameters
    got = inspect.signature(open_store).parameters
    public = [name for name in expected if not name.startswith("_")]
    assert [name for name in got if name != "timeout"] == public
    for name in public:
        assert got[name].default == expected[name].default


# -- behaviour -------------------------------------------------------------------------------------


def test_round_trip(store: SyncStore) -> None:
    session = store.sessions.create("sync")
    reply = store.messages.create(session.id, role=Role.ASSISTANT, model="m")
    reply.append_text("hello")
    store.messages.update(reply)
    reply.append_text(" world")  # update() copied: this change is not in the buffer yet
    store.messages.flush(reply.id)
    assert store.messages.get(reply.id).text == "hello"
    store.messages.update(reply)
    reply.add_finish(FinishReason.END_TURN)
    store.messages.update(reply)  # terminal: written before it returns
    stored = store.messages.get(reply.id)
    assert (stored.text, stored.is_finished) == ("hello world", True)
    assert [m.id for m in store.messages.list(session.id)] == [reply.id]
    question = store.messages.create(session.id, role="user")
    assert [m.id for m in store.messages.list_user_messages(session.id)] == [question.id]
    assert [m.id for m in store.messages.list_all_user_messages()] == [question.id]
    session.title = "renamed"
    assert store.sessions.save(session).title == "renamed"
    assert [s.title for s in store.sessions.list()] == ["renamed"]
    assert store.sessions.get(session.id).message_count == 2
    store.messages.delete(question.id)
    store.messages.delete_session_messages(session.id)
    assert store.messages.list(session.id) == []
    store.sessions.delete(session.id)
    assert store.sessions.list() == []
    assert store.recover().messages_interrupted == 0
    assert store.messages.stats().terminal_writes == 1
    assert store.writer_id is not None
    assert store.url.startswith(("sqlite", "postgresql"))


def test_errors_keep_their_type(store: SyncStore) -> None:
    with pytest.raises(MessageNotFound):
        store.messages.get("no-such-message")
    with pytest.raises(SessionNotFound):
        store.sessions.get("no-such-session")
    with pytest.raises(InvalidMessage):
        store.messages.update("not a message")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="unknown role"):
        store.messages.create("s", role="robot")
    session = store.sessions.create("still works")
    assert store.sessions.get(session.id).title == "still works"


def test_sixteen_threads_stream_at_once(db_url: str) -> None:
    threads, deltas = 16, 40
    with open_store(db_url) as store:
        session = store.sessions.create("many threads")
        ids: dict[int, str] = {}

        def stream(n: int) -> None:
            reply = store.messages.create(session.id, role=Role.ASSISTANT)
            ids[n] = reply.id
            for i in range(deltas):
                reply.append_text(f"{n}.{i} ")
                store.messages.update(reply)
                if i == deltas // 2:
                    reply.add_tool_call(ToolCall(f"call-{n}", "search", input="{}"))
                    store.messages.update(reply)
            reply.add_finish(FinishReason.END_TURN)
            store.messages.update(reply)
            store.messages.flush(reply.id)

        run_threads(threads, stream)
        stats = store.messages.stats()
        assert stats.updates_accepted == threads * (deltas + 2)
        assert stats.pending_messages == 0
    assert loop_threads() == []
    with open_store(db_url) as reopened:  # what reached the database
        listed = reopened.messages.list(session.id)
        # (Recovery answered the tool calls left without a result, in TOOL messages.)
        stored = {m.id: m for m in listed if m.role is Role.ASSISTANT}
        assert len(stored) == threads
        for n, message_id in ids.items():
            message = stored[message_id]
            assert message.text == "".join(f"{n}.{i} " for i in range(deltas))
            assert [c.id for c in message.tool_calls] == [f"call-{n}"]
            assert message.finish is not None
            assert message.finish.reason is FinishReason.END_TURN
        assert reopened.sessions.get(session.id).message_count == len(listed)


def test_subscriber_in_another_thread_sees_every_message_end(db_url: str) -> None:
    store = open_store(db_url)
    subscription = store.messages.subscribe()
    seen: list[Event[Message]] = []
    consumer = threading.Thread(target=lambda: seen.extend(subscription))
    consumer.start()
    session = store.sessions.create("ui")

    def stream(n: int) -> None:
        reply = store.messages.create(session.id, role=Role.ASSISTANT)
        for i in range(20):
            reply.append_text(f"{i} ")
            store.messages.update(reply)
        reply.add_finish(FinishReason.END_TURN)
        store.messages.update(reply)

    run_threads(4, stream)
    store.close()  # ends the iteration after the consumer read everything announced
    consumer.join(WAIT)
    assert not consumer.is_alive()
    created = [e.payload.id for e in seen if e.type is EventType.CREATED]
    assert len(created) == 4
    for message_id in created:
        mine = [e for e in seen if e.payload.id == message_id]
        assert mine[0].type is EventType.CREATED
        assert mine[-1].payload.is_finished
        assert mine[-1].payload.text == "".join(f"{i} " for i in range(20))
    assert subscription.closed
    with pytest.raises(SubscriptionEnded):
        subscription.get()


def test_events_announced_while_closing_are_still_read(db_url: str) -> None:
    store = open_store(db_url, debounce=60)  # nothing written until the final flush
    subscription = store.messages.subscribe()
    session = store.sessions.create("closing")
    reply = store.messages.create(session.id, role=Role.ASSISTANT)
    reply.append_text("buffered until close")
    store.messages.update(reply)
    assert subscription.get(timeout=WAIT).type is EventType.CREATED
    store.close()
    last = subscription.get(timeout=WAIT)
    assert (last.type, last.payload.text) == (EventType.UPDATED, "buffered until close")
    assert list(subscription) == []


def test_get_timeout_loses_no_event(store: SyncStore) -> None:
    with store.messages.subscribe() as subscription:
        with pytest.raises(TimeoutError):
            subscription.get(timeout=0.05)  # nothing happened yet
        session = store.sessions.create("s")
        created = store.messages.create(session.id, role=Role.USER)
        event = subscription.get(timeout=WAIT)  # taken by the receive the first get() started
        assert (event.type, event.payload.id) == (EventType.CREATED, created.id)
    assert subscription.closed
    with pytest.raises(SubscriptionEnded):
        subscription.get()


def test_close_from_another_thread_ends_a_waiting_get(store: SyncStore) -> None:
    subscription = store.messages.subscribe()
    ended: list[BaseException] = []

    def consume() -> None:
        try:
            subscription.get()
        except BaseException as exc:
            ended.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    subscription.close()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert [type(e) for e in ended] == [SubscriptionEnded]
    assert store.messages.stats().broker.subscribers == 0


def test_session_events(store: SyncStore) -> None:
    with store.sessions.subscribe() as subscription:
        session = store.sessions.create("watched")
        store.sessions.delete(session.id)
        events = [subscription.get(timeout=WAIT) for _ in range(2)]
    assert [(e.type, e.payload.id) for e in events] == [
        (EventType.CREATED, session.id),
        (EventType.DELETED, session.id),
    ]


def test_close_joins_the_thread_and_leaks_none(db_url: str) -> None:
    before = set(threading.enumerate())
    store = open_store(db_url)
    loop_thread = store.thread
    assert loop_thread.is_alive() and loop_thread.daemon
    subscription = store.messages.subscribe()
    session = store.sessions.create("threads")
    run_threads(4, lambda n: store.messages.create(session.id, role=Role.USER))
    store.close()
    assert not loop_thread.is_alive()  # joined before close() returned
    assert store.closed
    assert subscription.closed
    # Threads the database driver started on the loop thread end with the engine's disposal;
    # give each a bounded moment to finish its last step, then none may be left.
    for thread in set(threading.enumerate()) - before:
        thread.join(WAIT)
    assert set(threading.enumerate()) - before == set()


def test_calls_after_close_raise_store_closed(store: SyncStore) -> None:
    session = store.sessions.create("s")
    store.close()
    store.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: store.sessions.create("late"),
        lambda: store.sessions.list(),
        lambda: store.messages.create(session.id, role=Role.USER),
        lambda: store.messages.flush_all(),
        lambda: store.messages.subscribe(),
        lambda: store.messages.stats(),
        lambda: store.recover(),
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()


def test_a_call_from_the_loop_thread_raises_instead_of_deadlocking(store: SyncStore) -> None:
    raised: list[BaseException] = []

    def receiver(sender: object, **kwargs: Any) -> None:
        for call in (lambda: store.sessions.list(), store.close):
            try:
                call()
            except BaseException as exc:
                raised.append(exc)

    batch_written.connect(receiver)
    try:
        session = store.sessions.create("s")
        reply = store.messages.create(session.id, role=Role.ASSISTANT)
        reply.add_finish(FinishReason.END_TURN)
        store.messages.update(reply)  # a terminal write: batch_written fires on the loop thread
    finally:
        batch_written.disconnect(receiver)
    assert [type(e) for e in raised] == [RuntimeError, RuntimeError]
    assert "own event-loop thread" in str(raised[0])
    assert store.sessions.get(session.id).message_count == 1  # the store still works


def _block_the_next_create(store: SyncStore) -> SyncSubscription[Message]:
    """A full subscriber that makes the next ``create()`` wait long for room."""
    set_must_deliver_timeout(store._store, 600)  # the blocking twin's asyncio store
    stuck = store.messages.subscribe(buffer_size=1)
    session = store.sessions.create("blocked")
    store.messages.create(session.id, role=Role.USER)  # fills the one slot
    return stuck


def _both_creates_reach(stuck: SyncSubscription[Message]) -> None:
    """A cancelled caller stops waiting; its announcement is never withdrawn."""
    events = [stuck.get(timeout=WAIT), stuck.get(timeout=WAIT)]
    assert [e.type for e in events] == [EventType.CREATED, EventType.CREATED]
    assert stuck.waiting_senders == 0
    stuck.close()


def test_a_timeout_cancels_the_call_and_the_store_keeps_working(db_url: str) -> None:
    with open_store(db_url, timeout=0.5) as store:
        stuck = _block_the_next_create(store)
        session = store.sessions.list()[0]
        with pytest.raises(TimeoutError, match="create"):
            store.messages.create(session.id, role=Role.USER)
        assert len(store.messages.list(session.id)) == 2  # created, then its wait cancelled
        _both_creates_reach(stuck)


def test_keyboard_interrupt_cancels_the_waiting_call(db_url: str) -> None:
    assert threading.current_thread() is threading.main_thread()
    with open_store(db_url) as store:
        stuck = _block_the_next_create(store)
        session = store.sessions.list()[0]

        def interrupt() -> None:
            # No event says "the main thread is now waiting", so watch the broker's state.
            wait_until(lambda: stuck.waiting_senders == 1, "create() to wait for room")
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupter = threading.Thread(target=interrupt)
        try:
            interrupter.start()
            with pytest.raises(KeyboardInterrupt):
                store.messages.create(session.id, role=Role.USER)
        finally:
            interrupter.join(WAIT)
            signal.signal(signal.SIGINT, previous)
        assert len(store.messages.list(session.id)) == 2
        _both_creates_reach(stuck)


def test_bad_arguments_raise_and_leave_no_thread(db_url: str) -> None:
    with pytest.raises(ValueError, match="debounce"):
        open_store(db_url, debounce="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        open_store(db_url, timeout=0)
    assert loop_threads() == []


def test_a_collected_store_is_closed_with_a_warning(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    loop_thread = store.thread
    del store
    with pytest.warns(ResourceWarning, match="unclosed blocking store"):
        gc.collect()
    loop_thread.join(WAIT)
    assert not loop_thread.is_alive()


def _run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_exit_without_close_flushes_and_does_not_hang(db_url: str, tmp_path: Path) -> None:
    done = _run_script(
        f"""
        from messagestore.sync import open_store

        store = open_store({db_url!r}, debounce=600)  # no timer fires before exit
        session = store.sessions.create("left open")
        reply = store.messages.create(session.id, role="assistant")
        reply.append_text("flushed at exit")
        store.messages.update(reply)
        print(reply.id)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    with open_store(db_url) as store:
        assert store.messages.get(done.stdout.strip()).text == "flushed at exit"


def test_a_forked_child_refuses_calls(sqlite_url: str, tmp_path: Path) -> None:
    done = _run_script(
        f"""
        import os, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
        from messagestore.sync import open_store

        store = open_store({sqlite_url!r})
        pid = os.fork()
        if pid == 0:
            try:
                store.sessions.list()
            except RuntimeError as exc:
                print("child:", "fork" in str(exc))
            store.close()  # marks the child's copy closed; the parent's store is untouched
            raise SystemExit(0)  # the exit hook runs here and must skip the parent's store
        _, status = os.waitpid(pid, 0)
        print("child exit:", os.waitstatus_to_exitcode(status))
        print("parent:", store.sessions.create("after fork").title)
        store.close()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["child: True", "child exit: 0", "parent: after fork"]
