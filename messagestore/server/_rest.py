"""The REST routes: sessions, messages, input into the dispatcher, stop.

``GET/POST /api/sessions``, ``GET/DELETE /api/sessions/{id}``, ``GET
/api/sessions/{id}/messages`` (a snapshot with the ``revision`` it is consistent at),
``GET /api/messages/{id}``, ``POST /api/sessions/{id}/inputs`` (202 once committed) and ``POST
/api/sessions/{id}/stop``. Sessions and messages are the JSON of ``messagestore export --format
json`` plus ``revision`` (``_json``). Reads read the database: a streaming message is shown as
last written. Bodies and answers: README, "HTTP service", and ``_openapi``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._context import context, endpoint, json_response
from ._errors import ApiError
from ._inbound import Inbound
from ._json import message_json, session_json
from ._validate import json_body, no_body

__all__ = ["routes"]

_SESSION_FIELDS = frozenset({"title", "parent_session_id"})
_INPUT_FIELDS = frozenset({"text", "key", "metadata"})


@endpoint
async def list_sessions(request: Request) -> Response:
    sessions = await context(request).store.sessions.list()
    return json_response({"sessions": [session_json(s) for s in sessions]})


@endpoint
async def create_session(request: Request) -> Response:
    body = await json_body(request, _SESSION_FIELDS, optional=True)
    title = body.string("title")
    parent = body.optional_string("parent_session_id")
    store = context(request).store
    if parent is not None:
        await store.sessions.get(parent)  # 404 names the missing parent
    session = await store.sessions.create(title, parent_session_id=parent)
    return json_response(session_json(session), status=201)


@endpoint
async def get_session(request: Request) -> Response:
    session = await context(request).store.sessions.get(request.path_params["session_id"])
    return json_response(session_json(session))


@endpoint
async def delete_session(request: Request) -> Response:
    store = context(request).store
    session_id = request.path_params["session_id"]
    await store.sessions.get(session_id)
    await store.sessions.delete(session_id)
    return Response(status_code=204)


@endpoint
async def session_messages(request: Request) -> Response:
    store = context(request).store
    session_id = request.path_params["session_id"]
    await store.sessions.get(session_id)
    snapshot = await store.messages.snapshot(session_id)
    return json_response(
        {
            "session_id": session_id,
            "revision": snapshot.revision,
            "messages": [message_json(m) for m in snapshot.messages],
        }
    )


@endpoint
async def get_message(request: Request) -> Response:
    message = await context(request).store.messages.get(request.path_params["message_id"])
    return json_response(message_json(message))


@endpoint
async def post_input(request: Request) -> Response:
    ctx = context(request)
    session_id = request.path_params["session_id"]
    body = await json_body(request, _INPUT_FIELDS)
    text = body.string("text", required=True)
    key = body.optional_string("key")
    metadata = body.optional_object("metadata")
    await ctx.store.sessions.get(session_id)
    inbound = _inbound(request)
    accepted = await inbound.submit(session_id, text, key=key, metadata=metadata)
    return json_response(
        {
            "input_id": accepted.input_id,
            "session_id": accepted.session_id,
            "duplicate": accepted.duplicate,
            "submitted_at": (
                accepted.submitted_at.isoformat() if accepted.submitted_at is not None else None
            ),
        },
        status=202,
    )


@endpoint
async def stop_session(request: Request) -> Response:
    ctx = context(request)
    session_id = request.path_params["session_id"]
    await no_body(request)
    await ctx.store.sessions.get(session_id)
    stopped = await _inbound(request).stop(session_id)
    return json_response({"stopped": stopped})


def _inbound(request: Request) -> Inbound:
    inbound = context(request).inbound
    if inbound is None:
        raise ApiError(503, "this server takes no input: it was started without a dispatcher")
    return inbound


routes = [
    Route("/api/sessions", list_sessions, methods=["GET"]),
    Route("/api/sessions", create_session, methods=["POST"]),
    Route("/api/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/api/sessions/{session_id}", delete_session, methods=["DELETE"]),
    Route("/api/sessions/{session_id}/messages", session_messages, methods=["GET"]),
    Route("/api/sessions/{session_id}/inputs", post_input, methods=["POST"]),
    Route("/api/sessions/{session_id}/stop", stop_session, methods=["POST"]),
    Route("/api/messages/{message_id}", get_message, methods=["GET"]),
]
