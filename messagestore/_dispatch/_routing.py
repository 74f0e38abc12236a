"""Routing: an external conversation (a channel, a peer, a thread) maps to one session.

``route(key)`` returns the session the key routes to, creating it (titled ``title``, default
the key) on first sight; ``delivery`` — what a transport needs to send the reply (channel id,
thread id, webhook) — is stored with the route on every call, so the newest one can be read
back (``delivery_of``, ``Turn.delivery``). The session is created through the public
``store.sessions.create`` (subscribers hear of it), then the route is inserted; if a
concurrent first sight of the same key won, the session just created is deleted again and the
winner's is returned. Deleting the session deletes its routes.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Mapping
from typing import Any

from .._errors import SessionNotFound
from .._store import Store
from .._validation import check_json_object
from ._persist import run_read, run_transaction
from ._persist_control import delivery_of, route_insert, route_lookup
from ._validate import check_key, check_session_id

__all__ = ["delivery", "route"]


async def route(
    store: Store, key: object, *, title: str | None, delivery: Mapping[str, Any] | None
) -> str:
    """The session ``key`` routes to (created on first sight); stores ``delivery``."""
    routing_key = check_key("routing key", key, required=True)
    assert routing_key is not None
    context = check_json_object("delivery", delivery)
    payload = None if context is None else json.dumps(context, ensure_ascii=True)
    if payload is None:
        lookup = functools.partial(route_lookup, key=routing_key, delivery=None)
        found = await run_read(store, lookup)
    else:
        found = await run_transaction(
            store, functools.partial(route_lookup, key=routing_key, delivery=payload)
        )
    if found is not None:
        return found
    session = await store.sessions.create(routing_key if title is None else title)
    winner = await run_transaction(
        store,
        functools.partial(route_insert, key=routing_key, session_id=session.id, delivery=payload),
    )
    if winner != session.id:
        with contextlib.suppress(SessionNotFound):
            await store.sessions.delete(session.id)
    return winner


async def delivery(store: Store, session_id: object) -> Mapping[str, Any] | None:
    """The newest delivery context routed to the session (None if none was given)."""
    checked = check_session_id(session_id)
    return await run_read(store, functools.partial(delivery_of, session_id=checked))
