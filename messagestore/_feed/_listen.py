"""Hints that another process committed: PostgreSQL ``LISTEN``, or a poll of SQLite's counter.

A hint only wakes the feed, which then reads what changed after its horizon, so a lost hint
costs latency, never a change (after a reconnect the feed is hinted once). PostgreSQL: one
dedicated asyncpg connection ``LISTEN``s on the channel every commit ``NOTIFY``s (naming its
source, so a store ignores its own); every round trip is bounded and a dropped connection is
replaced with backoff. SQLite: the counter row is read every ``SQLITE_POLL_INTERVAL`` seconds.
Both run only while the feed has subscribers. The story: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from .._database._repository import Repository
from .._database._revisions import NOTIFY_CHANNEL
from .._supervisor import Loop, Supervisor

__all__ = ["SQLITE_POLL_INTERVAL", "Hintable", "start_hints"]

SQLITE_POLL_INTERVAL = 0.025
_KEEPALIVE = 5.0
_CONNECT_TIMEOUT = 10.0
_RETRY_MAX = 5.0
_CANCEL_GRACE = 1.0
_log = logging.getLogger("messagestore")


class Hintable(Protocol):
    def hint(self, revision: int | None = None, source: str | None = None) -> None: ...


def start_hints(repository: Repository, feed: Hintable, supervisor: Supervisor) -> Loop:
    """Start the hint source for ``feed`` as a loop of ``supervisor``; stop it to end it."""
    if repository.database.dialect == "postgresql":
        url = repository.database.url
        return supervisor.start("feed-hints", lambda: _listen_postgres(url, feed))
    return supervisor.start("feed-hints", lambda: _poll_sqlite(repository, feed))


async def _poll_sqlite(repository: Repository, feed: Hintable) -> None:
    never = asyncio.Event()  # waited on with a timeout: a timer, not a spin
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(never.wait(), SQLITE_POLL_INTERVAL)
        try:
            newest, _ = await repository.read_counter()
        except Exception as exc:
            _log.debug("messagestore feed: polling the counter failed: %r", exc)
            continue
        feed.hint(newest)


async def _listen_postgres(url: str, feed: Hintable) -> None:
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 0.1

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        source, _, revision = payload.rpartition(" ")
        try:
            feed.hint(int(revision), source)
        except ValueError:
            feed.hint()

    while True:
        try:
            conn = await _connect(asyncpg, dsn)
        except Exception as exc:
            _log.warning(
                "messagestore feed: LISTEN connection failed (retry in %.1fs): %r", delay, exc
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
            continue
        lost = asyncio.get_running_loop().create_future()

        def on_lost(_conn: Any, lost: asyncio.Future[None] = lost) -> None:
            if not lost.done():
                lost.set_result(None)

        try:
            conn.add_termination_listener(on_lost)
            # Bounded like every other round trip here: a server that stops answering must not
            # leave the feed without hints for good. (``asyncio.timeout``, not ``wait_for``: on
            # Python 3.11 ``wait_for`` drops a cancellation that arrives just as what it waits
            # for completes, and the stopped listener would then listen on.)
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            feed.hint()  # catch up with whatever committed while nobody listened
            delay = 0.1
            while not lost.done():
                try:
                    async with asyncio.timeout(_KEEPALIVE):
                        await asyncio.shield(lost)
                except TimeoutError:
                    async with asyncio.timeout(_CONNECT_TIMEOUT):
                        await conn.execute("SELECT 1")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("messagestore feed: LISTEN connection lost: %r", exc)
        finally:
            conn.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX)


async def _connect(asyncpg: Any, dsn: str) -> Any:
    """``asyncpg.connect``, but a cancellation lets the handshake end (for at most
    ``_CANCEL_GRACE`` s) and closes what it opened: cancelling asyncpg in the middle of its
    handshake leaves a future inside its protocol failing with nobody to see it ("exception
    was never retrieved"). A second cancellation during that grace cuts it short."""
    connecting = asyncio.ensure_future(asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        try:
            await asyncio.wait({connecting}, timeout=_CANCEL_GRACE)
        finally:
            _discard(connecting)
        raise


def _discard(connecting: asyncio.Future[Any]) -> None:
    """Close the connection a cancelled ``_connect`` opened, or stop it opening one."""
    if not connecting.done():
        connecting.cancel()
    elif not connecting.cancelled() and connecting.exception() is None:
        connecting.result().terminate()
