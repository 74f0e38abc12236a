"""``messagestore watch [--session ID] [--since REV] [--json]``: tail the change feed, live.

Contracts:

* It only reads, like the inspection commands: it never creates a database (a missing SQLite
  file is an error naming the path), never migrates one (the schema must be the newest this
  messagestore knows), takes no writer lease and runs no recovery sweep. It follows the change
  feed as any store's subscriber does, so it sees what every process commits to the database
  (PostgreSQL: ``LISTEN``; SQLite: a poll of the revision counter while it runs).
* One line per message event, written and flushed as it arrives::

      REVISION TYPE SESSION MESSAGE ROLE PREVIEW

  ``PREVIEW`` is the text, shortened, then tool calls (``→ name``), tool results
  (``← name``) and the finish (``■ reason``). ``--json`` prints one JSON object per line
  instead: ``{"revision": ..., "type": ..., "message": {...}}``, the message in the format of
  ``export --format json``. A ``deleted`` event replayed from the database carries only the
  message's id, session and role (its content is gone): its parts are empty.
* ``--since REV`` first replays the newest state of every message that changed after revision
  ``REV`` (a line's first field), then continues live: restarting with the last revision seen
  misses nothing and repeats nothing. Without it only what commits from now on is shown.
  ``--session ID`` (an id, or a unique prefix of an existing session's) shows one session.
* It runs until interrupted: Ctrl-C exits with 130; a reader that goes away (``| head``) ends
  it quietly with 0. A ``REV`` it cannot resume from (``RevisionUnavailable``) is an error
  (exit 1) that says so: older than the retained tombstones (``RevisionCompacted``, also when
  the watch itself fell that far behind), or above the database's newest revision
  (``RevisionFromFuture``: from another database, or from before this one was reset). Start
  again without ``--since``, or from a revision the database gave (a line's first field).
"""

from __future__ import annotations

import json
import re
from typing import TextIO

from pubsub import Broker, Event, EventType

from .._changes import Kind
from .._feed._feed import Feed
from .._feed._subscription import FeedSubscription
from .._model import Message, Session
from .._store import _message_key, _message_topic, _session_key
from ._common import Target
from ._inspect import find_session, message_document, reading

__all__ = ["PREVIEW_LENGTH", "format_event", "watch"]

PREVIEW_LENGTH = 60


async def watch(
    target: Target, out: TextIO, *, session: str | None, since: int | None, as_json: bool
) -> None:
    """Print every message event of ``target`` (see the module docstring) until cancelled."""
    async with reading(target) as repository:
        session_id = None if session is None else (await find_session(repository, session)).id
        messages: Broker[Message] = Broker(key=_message_key, topic=_message_topic)
        sessions: Broker[Session] = Broker(key=_session_key)
        feed = Feed(repository, messages, sessions)
        repository.set_announce(feed.announce)
        sub = FeedSubscription(
            feed,
            repository,
            messages,
            Kind.MESSAGE,
            buffer_size=None,
            since=since,
            session_id=session_id,
        )
        try:
            async for event in sub:
                out.write(format_event(event, as_json=as_json) + "\n")
                out.flush()
        finally:
            sub.close()
            await feed.close()
            messages.shutdown()
            sessions.shutdown()


def format_event(event: Event[Message], *, as_json: bool = False) -> str:
    """One output line for ``event`` (without the newline)."""
    message = event.payload
    if as_json:
        document = {
            "revision": message.revision,
            "type": event.type.value,
            "message": message_document(message),
        }
        return json.dumps(document, ensure_ascii=False)
    fields = [
        str(message.revision),
        event.type.value,
        message.session_id,
        message.id,
        message.role.value,
    ]
    preview = "(deleted)" if event.type is EventType.DELETED else _preview(message)
    return " ".join(fields) + (f" {preview}" if preview else "")


def _preview(message: Message) -> str:
    pieces = []
    text = re.sub(r"\s+", " ", message.text).strip()
    if not text and message.reasoning is not None:
        text = "thinking: " + re.sub(r"\s+", " ", message.reasoning.thinking).strip()
    if text:
        if len(text) > PREVIEW_LENGTH:
            text = text[: PREVIEW_LENGTH - 1] + "…"
        pieces.append(json.dumps(text, ensure_ascii=False))
    pieces += [f"→ {call.name}" for call in message.tool_calls]
    pieces += [f"← {result.name}" for result in message.tool_results]
    finish = message.finish
    if finish is not None:
        pieces.append(f"■ {finish.reason.value}")
    return " ".join(pieces)
