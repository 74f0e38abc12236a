"""The OpenAPI 3.1 document of the server (``GET /openapi.json``).

Written by hand, next to the routes it describes, and checked against the running server by the
test suite (every route answers as documented: status codes, bodies, the error shape). Keep the
two in step: a route or field added in ``_rest`` / ``_live`` is added here too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR_CODES = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "queue_full",
    "payload_too_large",
    "unsupported_media",
    "invalid",
    "internal",
    "unavailable",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_STRING = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_REVISION = {"type": "integer", "minimum": 0}
_STORABLE = "^[^\\x00\\ud800-\\udfff]*$"  # no NUL, no lone surrogate (a column stores it)

_PART = {
    "type": "object",
    "description": "A stored part, as `messagestore export --format json` writes it.",
    "required": ["type", "data"],
    "properties": {
        "type": {
            "type": "string",
            "enum": [
                "text",
                "reasoning",
                "image_url",
                "binary",
                "tool_call",
                "tool_result",
                "finish",
            ],
        },
        "data": {"type": "object"},
    },
}

_MESSAGE = {
    "type": "object",
    "required": [
        "id",
        "session_id",
        "role",
        "model",
        "provider",
        "created_at",
        "updated_at",
        "is_summary_message",
        "finished",
        "parts",
        "revision",
    ],
    "properties": {
        "id": _STRING,
        "session_id": _STRING,
        "role": {"type": "string", "enum": ["user", "assistant", "system", "tool"]},
        "model": _STRING,
        "provider": _STRING,
        "created_at": _TIME,
        "updated_at": _TIME,
        "is_summary_message": {"type": "boolean"},
        "finished": {"type": "boolean"},
        "parts": {"type": "array", "items": _ref("Part")},
        "revision": _REVISION,
    },
}

_MESSAGE_DELTA = {
    "type": "object",
    "description": "The `data:` of an `event: delta` frame of `/api/events`: the change of "
    "message `id` from its state at revision `base` (the state this connection last sent of "
    "it) to its state at `revision`. Apply it only to a copy at `base` (otherwise drop the "
    "copy and fetch the message, or wait for a whole frame); then, in order: each `append` "
    "entry appends its string to the streamed field of that part (`data.text` of text, "
    "`data.thinking` of reasoning, `data.input` of a tool call); each `parts` entry, in "
    "ascending index order, replaces the part at that index or adds it when the index is the "
    "number of parts; each `set` entry replaces that top-level field; the copy's `revision` "
    "becomes the delta's. Absent keys mean unchanged. `/static/delta.js` applies it.",
    "required": ["id", "base", "revision"],
    "additionalProperties": False,
    "properties": {
        "id": _STRING,
        "base": _REVISION,
        "revision": _REVISION,
        "append": {
            "type": "object",
            "propertyNames": {"pattern": "^(0|[1-9][0-9]*)$"},
            "additionalProperties": _STRING,
        },
        "parts": {
            "type": "object",
            "propertyNames": {"pattern": "^(0|[1-9][0-9]*)$"},
            "additionalProperties": _ref("Part"),
        },
        "set": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "session_id": _STRING,
                "role": {"type": "string", "enum": ["user", "assistant", "system", "tool"]},
                "model": _STRING,
                "provider": _STRING,
                "created_at": _TIME,
                "updated_at": _TIME,
                "is_summary_message": {"type": "boolean"},
                "finished": {"type": "boolean"},
            },
        },
    },
}

_SESSION = {
    "type": "object",
    "required": [
        "id",
        "title",
        "parent_session_id",
        "message_count",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "summary_message_id",
        "created_at",
        "updated_at",
        "revision",
    ],
    "properties": {
        "id": _STRING,
        "title": _STRING,
        "parent_session_id": {"type": ["string", "null"]},
        "message_count": {"type": "integer"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "cost": {"type": ["number", "null"]},
        "summary_message_id": {"type": ["string", "null"]},
        "created_at": _TIME,
        "updated_at": _TIME,
        "revision": _REVISION,
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "code": {"type": "string", "enum": _ERROR_CODES},
                "message": {"type": "string"},
            },
        }
    },
}

_NEW_SESSION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "title": {
            "type": "string",
            "pattern": _STORABLE,
            "description": "May be empty; no NUL character or lone surrogate.",
        },
        "parent_session_id": {"type": ["string", "null"], "pattern": _STORABLE},
    },
}

_NEW_INPUT = {
    "type": "object",
    "required": ["text"],
    "additionalProperties": False,
    "properties": {
        "text": {
            "type": "string",
            "pattern": "\\S",
            "maxLength": 1024 * 1024,
            "description": "Not empty or only whitespace; anything else is kept verbatim.",
        },
        "key": {
            "type": ["string", "null"],
            "pattern": _STORABLE,
            "minLength": 1,
            "maxLength": 1024,
            "description": "An id of the inbound message: the same key again is a no-op.",
        },
        "metadata": {"type": ["object", "null"]},
    },
}

_ACCEPTED = {
    "type": "object",
    "required": ["input_id", "session_id", "duplicate", "submitted_at"],
    "properties": {
        "input_id": _STRING,
        "session_id": _STRING,
        "duplicate": {
            "type": "boolean",
            "description": "The key named an input stored earlier (its `input_id` is returned). "
            "An input this server process still tracks comes back with its own receipt and "
            "`duplicate` false: compare `input_id`.",
        },
        "submitted_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

_UI_MESSAGE = {
    "type": "object",
    "description": "A UI message as the AI SDK sends it; only the text parts of user messages "
    "are read.",
    "required": ["role", "parts"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _STORABLE},
        "role": {"type": "string", "enum": ["user", "assistant", "system"]},
        "parts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": _STRING, "text": _STRING},
            },
        },
    },
}

_CHAT_REQUEST = {
    "type": "object",
    "description": "The body `DefaultChatTransport` of the `ai` package sends; other fields "
    "are ignored.",
    "required": ["id", "trigger", "messages"],
    "properties": {
        "id": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": _STORABLE,
            "description": "The chat id: the session's id (created on first sight).",
        },
        "trigger": {"type": "string", "enum": ["submit-message", "regenerate-message"]},
        "messageId": {"type": ["string", "null"]},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": _ref("UIMessage"),
            "description": "The chat's messages; the last user message is submitted (its `id` "
            "is the input's key).",
        },
    },
}

_UI_STREAM_HEADERS = {
    "x-vercel-ai-ui-message-stream": {"schema": {"type": "string", "const": "v1"}}
}

_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_MESSAGE_ID = {
    "name": "message_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}

_UNAUTHORIZED = {"401": _error("A token is required and was not given, or is wrong.")}
_NOT_FOUND = {"404": _error("No such session or message.")}
_BODY_ERRORS = {
    "413": _error("The body is larger than the server's limit."),
    "415": _error("The body is not application/json."),
    "422": _error("The body is not what the route takes (the message names the field)."),
}
_EVENT_STREAM = {
    "text/event-stream": {
        "schema": {"type": "string"},
    }
}


def openapi_document() -> dict[str, Any]:
    """The document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "messagestore",
            "version": "1",
            "description": "Sessions and streaming messages of agent conversations: REST, "
            "Server-Sent Events of every change, the Vercel AI SDK UI message stream, and input "
            "into the dispatcher. Every error is a JSON `Error`.",
        },
        "components": {
            "schemas": {
                "Part": _PART,
                "Message": _MESSAGE,
                "MessageDelta": _MESSAGE_DELTA,
                "Session": _SESSION,
                "Error": _ERROR,
                "NewSession": _NEW_SESSION,
                "NewInput": _NEW_INPUT,
                "Accepted": _ACCEPTED,
                "UIMessage": _UI_MESSAGE,
                "ChatRequest": _CHAT_REQUEST,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/sessions": {
                "get": {
                    "operationId": "listSessions",
                    "summary": "Every session, newest first.",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["sessions"],
                                "properties": {
                                    "sessions": {"type": "array", "items": _ref("Session")}
                                },
                            },
                            "The sessions.",
                        ),
                        **_UNAUTHORIZED,
                    },
                },
                "post": {
                    "operationId": "createSession",
                    "summary": "Create a session.",
                    "requestBody": {
                        # Both fields are optional, but the body is JSON: `{}` (or an empty
                        # body sent as application/json) makes an untitled session.
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewSession")}},
                    },
                    "responses": {
                        "201": _json(_ref("Session"), "The new session."),
                        "404": _error("The parent session does not exist."),
                        **_BODY_ERRORS,
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/sessions/{session_id}": {
                "parameters": [_SESSION_ID],
                "get": {
                    "operationId": "getSession",
                    "summary": "One session.",
                    "responses": {
                        "200": _json(_ref("Session"), "The session."),
                        **_NOT_FOUND,
                        **_UNAUTHORIZED,
                    },
                },
                "delete": {
                    "operationId": "deleteSession",
                    "summary": "Delete a session and its messages.",
                    "responses": {
                        "204": {"description": "Deleted."},
                        **_NOT_FOUND,
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/sessions/{session_id}/messages": {
                "parameters": [_SESSION_ID],
                "get": {
                    "operationId": "listMessages",
                    "summary": "The session's messages in creation order, and the revision they "
                    "are consistent at (pass it as `since` to /api/events).",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["session_id", "revision", "messages"],
                                "properties": {
                                    "session_id": _STRING,
                                    "revision": _REVISION,
                                    "messages": {"type": "array", "items": _ref("Message")},
                                },
                            },
                            "A snapshot of the session's messages.",
                        ),
                        **_NOT_FOUND,
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/sessions/{session_id}/inputs": {
                "parameters": [_SESSION_ID],
                "post": {
                    "operationId": "postInput",
                    "summary": "Submit user input to the dispatcher; it is committed when this "
                    "answers, and becomes (part of) a turn of the session's agent.",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewInput")}},
                    },
                    "responses": {
                        "202": _json(_ref("Accepted"), "The input is committed."),
                        "409": _error("The session's input queue is full."),
                        **_NOT_FOUND,
                        **_BODY_ERRORS,
                        "503": _error("The server takes no input (no dispatcher)."),
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/sessions/{session_id}/stop": {
                "parameters": [_SESSION_ID],
                "post": {
                    "operationId": "stopSession",
                    "summary": "Cancel the session's running turn and discard its pending input.",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["stopped"],
                                "properties": {"stopped": {"type": "boolean"}},
                            },
                            "`stopped` is false when there was nothing to cancel.",
                        ),
                        **_NOT_FOUND,
                        **_BODY_ERRORS,
                        "503": _error("The server takes no input (no dispatcher)."),
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/messages/{message_id}": {
                "parameters": [_MESSAGE_ID],
                "get": {
                    "operationId": "getMessage",
                    "summary": "One message, as last written.",
                    "responses": {
                        "200": _json(_ref("Message"), "The message."),
                        **_NOT_FOUND,
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/messages/{message_id}/ui-stream": {
                "parameters": [_MESSAGE_ID],
                "get": {
                    "operationId": "uiStream",
                    "summary": "The message as the Vercel AI SDK UI message stream (v1): "
                    "what it holds so far, then live until it finishes; ends with "
                    "`data: [DONE]`.",
                    "responses": {
                        "200": {
                            "description": "UI message chunks as Server-Sent Events (header "
                            "`x-vercel-ai-ui-message-stream: v1`).",
                            "headers": {
                                "x-vercel-ai-ui-message-stream": {
                                    "schema": {"type": "string", "const": "v1"}
                                }
                            },
                            "content": _EVENT_STREAM,
                        },
                        **_NOT_FOUND,
                        "503": _error(
                            "The server is shutting down, or serves as many streams as it "
                            "takes (`Retry-After`)."
                        ),
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/chat": {
                "post": {
                    "operationId": "chat",
                    "summary": "The Vercel AI SDK chat endpoint (`DefaultChatTransport`): "
                    "`submit-message` submits the last user message (its id the key: a "
                    "repeated POST submits nothing new); `regenerate-message` submits it again "
                    "and deletes the stored messages from the last user message on. Answers "
                    "with the UI message stream (v1) of the input's turn, live to its end "
                    "(`finish`, then `data: [DONE]`).",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ChatRequest")}},
                    },
                    "responses": {
                        "200": {
                            "description": "The turn's UI message chunks as Server-Sent Events.",
                            "headers": _UI_STREAM_HEADERS,
                            "content": _EVENT_STREAM,
                        },
                        "409": _error("The session's input queue is full."),
                        **_BODY_ERRORS,
                        "503": _error(
                            "The server takes no input (no dispatcher), is shutting down, or "
                            "serves as many streams as it takes (`Retry-After`)."
                        ),
                        **_UNAUTHORIZED,
                    },
                }
            },
            "/api/chat/{session_id}/stream": {
                "parameters": [_SESSION_ID],
                "get": {
                    "operationId": "chatStream",
                    "summary": "The UI message stream of the chat's pending or running turn, "
                    "from its start, live to its end (`resume: true` of `useChat`).",
                    "responses": {
                        "200": {
                            "description": "The turn's UI message chunks as Server-Sent Events.",
                            "headers": _UI_STREAM_HEADERS,
                            "content": _EVENT_STREAM,
                        },
                        "204": {"description": "No turn is pending or running (or no such chat)."},
                        "503": _error(
                            "The server takes no input (no dispatcher), is shutting down, or "
                            "serves as many streams as it takes (`Retry-After`)."
                        ),
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/api/events": {
                "get": {
                    "operationId": "events",
                    "summary": "Every change of messages (of one session) as Server-Sent "
                    "Events: `id:` the resume revision, `event:` created, updated or deleted "
                    "with `data:` the whole `Message`, or `delta` with `data:` a "
                    "`MessageDelta` (a later change of a message this connection sent: apply "
                    "it to the copy at its `base`). Reconnect with `Last-Event-ID` to resume "
                    "(whole states first, then deltas). `event: reset` means the resume point "
                    "is no longer retained: reload the snapshot and subscribe from its "
                    "revision.",
                    "parameters": [
                        {
                            "name": "session_id",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "schema": _REVISION,
                        },
                        {
                            "name": "deltas",
                            "in": "query",
                            "required": False,
                            "description": "`1`/`true` (the default): later changes of a "
                            "message may come as `event: delta`; `0`/`false`: whole states "
                            "only.",
                            "schema": {"type": "string", "enum": ["1", "true", "0", "false"]},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "The event stream.", "content": _EVENT_STREAM},
                        "404": _error("No such session."),
                        "422": _error(
                            "`since` or `Last-Event-ID` is not a revision, or `deltas` is not "
                            "one of 1, true, 0, false."
                        ),
                        "503": _error(
                            "The server is shutting down, or serves as many streams as it "
                            "takes (`Retry-After`)."
                        ),
                        **_UNAUTHORIZED,
                    },
                },
            },
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "The live web view.",
                    "responses": {
                        "200": {
                            "description": "The page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        **_UNAUTHORIZED,
                    },
                }
            },
            "/static/{name}": {
                "get": {
                    "operationId": "staticFile",
                    "summary": "The page's scripts (app.js; delta.js, the delta applier) and style "
                    "sheet (app.css).",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": _STRING}
                    ],
                    "responses": {
                        "200": {
                            "description": "The file.",
                            "content": {
                                "text/javascript": {"schema": _STRING},
                                "text/css": {"schema": _STRING},
                            },
                        },
                        "404": _error("No such file."),
                        **_UNAUTHORIZED,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": _json({"type": "object"}, "The OpenAPI document."),
                        **_UNAUTHORIZED,
                    },
                }
            },
        },
    }
