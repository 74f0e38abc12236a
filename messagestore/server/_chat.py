"""A chat backend the Vercel AI SDK's ``useChat`` talks to unchanged: ``POST /api/chat`` (the
transport's body; ``submit-message`` submits the last user message under its id as key, so a
repeated POST submits nothing new; ``regenerate-message`` submits it again and deletes what
followed it) answers with the UI message stream (v1) of the input's turn;
``GET /api/chat/{id}/stream`` is the session's pending or running turn, else ``204``. A stream
subscribes to the session's messages first, then reads the turn's stored state, so a client
that reconnects to any server on the same database resumes to the end. Malformed bodies are a
4xx JSON error naming the field, with nothing submitted. Details: docs/MODULES.md; the story:
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pubsub import Event, EventType, SubscriptionEnded

from .. import (
    FeedSubscription,
    Message,
    MessageDelta,
    NotFoundError,
    RevisionUnavailable,
    Role,
    SessionExists,
)
from ..dispatch import InputRecord, TurnRecord
from ._context import Context, context, endpoint
from ._errors import ApiError
from ._inbound import DispatcherLike
from ._json import dumps
from ._streams import next_event
from ._ui_stream import DONE, HEADERS, TurnStreamEncoder, UIStreamEncoder, sse_chunk
from ._validate import json_body

__all__ = ["MAX_ID_CHARS", "TITLE_CHARS", "ChatDispatcher", "routes"]

TITLE_CHARS = 80
"""A session created by ``POST /api/chat`` is titled with at most this much of its first text."""
MAX_ID_CHARS = 255
"""The longest chat id (a session id) and UI message id taken."""

_TRIGGERS = ("submit-message", "regenerate-message")
_ROLES = ("user", "assistant", "system")
_POLL = 0.25
"""Seconds between reads of what the feed does not announce, while a stream waits on it."""


class ChatDispatcher(DispatcherLike, Protocol):
    """What the chat routes need of ``messagestore.dispatch.Dispatcher``: the input routes'
    ``submit`` and ``stop``, and the records of inputs and turns."""

    async def get_input(self, input_id: str) -> InputRecord | None: ...

    async def active_input(self, session_id: str) -> InputRecord | None: ...

    async def get_turn(self, turn_id: str) -> TurnRecord | None: ...


# -- the body -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked ``POST /api/chat`` body."""

    session_id: str
    trigger: str
    message_id: str | None
    user_id: str  # the UI id of the last user message
    text: str  # its text
    title: str  # the first user text, cut to TITLE_CHARS


def parse_chat(data: Mapping[str, Any]) -> ChatRequest:
    """The body's fields, or ``ApiError(422)`` naming the first one that is wrong."""
    session_id = _id(data.get("id"), "id")
    trigger = data.get("trigger")
    if trigger not in _TRIGGERS:
        raise ApiError(
            422,
            "field 'trigger' must be 'submit-message' or 'regenerate-message', not "
            + _shown(trigger),
        )
    message_id = data.get("messageId")
    if message_id is not None:
        message_id = _id(message_id, "messageId")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(422, "field 'messages' must be a non-empty array of UI messages")
    first_text: str | None = None
    last: tuple[int, str, str] | None = None
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(422, f"field '{where}' must be an object (a UI message)")
        role = message.get("role")
        if role not in _ROLES:
            raise ApiError(
                422,
                f"field '{where}.role' must be 'user', 'assistant' or 'system', not {_shown(role)}",
            )
        parts = message.get("parts")
        if not isinstance(parts, list):
            raise ApiError(422, f"field '{where}.parts' must be an array")
        if role != "user":
            continue
        text = _text_of(parts, where)
        if first_text is None and text.strip():
            first_text = text
        last = (index, _id(message.get("id"), f"{where}.id"), text)
    if last is None:
        raise ApiError(422, "field 'messages' holds no user message")
    index, user_id, text = last
    if not text.strip():
        raise ApiError(422, f"field 'messages[{index}].parts' holds no text")
    title = " ".join((first_text or text).split())[:TITLE_CHARS]
    return ChatRequest(session_id, str(trigger), message_id, user_id, text, title)


def _text_of(parts: Sequence[Any], where: str) -> str:
    """The text of a user message's text parts, joined by blank lines (other parts ignored)."""
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise ApiError(422, f"field '{where}.parts[{index}]' must be an object")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise ApiError(422, f"field '{where}.parts[{index}].type' must be a string")
        if kind != "text":
            continue
        text = part.get("text")
        if not isinstance(text, str):
            raise ApiError(422, f"field '{where}.parts[{index}].text' must be a string")
        texts.append(text)
    return "\n\n".join(texts)


def _id(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ApiError(422, f"field {name!r} must be a non-empty string, not {_shown(value)}")
    if len(value) > MAX_ID_CHARS:
        raise ApiError(422, f"field {name!r} is longer than {MAX_ID_CHARS} characters")
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ApiError(422, f"field {name!r} contains a NUL character or a lone surrogate")
    return value


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value[:40])
    return type(value).__name__ if not isinstance(value, bool) else "a boolean"


# -- the routes -----------------------------------------------------------------------------------


def _dispatcher(ctx: Context) -> ChatDispatcher:
    if ctx.chat is None:
        raise ApiError(503, "this server takes no input: it was started without a dispatcher")
    dispatcher: ChatDispatcher = ctx.chat
    return dispatcher


@endpoint
async def post_chat(request: Request) -> Response:
    ctx = context(request)
    body = await json_body(request, None)
    chat = parse_chat(body.data)
    dispatcher = _dispatcher(ctx)
    store = ctx.store
    # The stream's room first: a server that serves as many streams as it takes answers 503
    # before anything is created or submitted.
    subscription = _subscribe(ctx, chat.session_id)
    try:
        with contextlib.suppress(SessionExists):  # seen before, or by a request racing this
            await store.sessions.create(chat.title, id=chat.session_id)
        if chat.trigger == "submit-message" and chat.message_id != chat.user_id:
            receipt = await dispatcher.submit(chat.session_id, chat.text, key=chat.user_id)
        else:
            receipt = await _regenerate(ctx, dispatcher, chat)
    except BaseException:
        _unsubscribe(ctx, subscription)
        raise
    return _respond(ctx, dispatcher, chat.session_id, str(receipt.id), subscription)


async def _regenerate(ctx: Context, dispatcher: ChatDispatcher, chat: ChatRequest) -> Any:
    """Submit the last user message again (regenerate, or an edit of it); on a new submission,
    delete the stored messages from the session's last user message on (see the module
    docstring)."""
    store = ctx.store
    stored = await store.messages.list(chat.session_id)
    users = [i for i, m in enumerate(stored) if m.role is Role.USER]
    doomed = [m.id for m in stored[users[-1] :]] if users else []
    if chat.trigger == "submit-message":  # an edit: new text under the message's old id
        digest = hashlib.sha256(chat.text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        key = f"{chat.user_id}:edit:{digest}:{len(stored)}"
    elif chat.message_id is not None:
        key = f"{chat.user_id}:regenerate:{chat.message_id}"
    else:  # without the replaced reply's id: what the session held
        key = f"{chat.user_id}:regenerate:{len(stored)}"
    if await dispatcher.active_input(chat.session_id) is not None:
        await dispatcher.stop(chat.session_id)
    receipt = await dispatcher.submit(chat.session_id, chat.text, key=key)
    if not getattr(receipt, "duplicate", False):
        for message_id in doomed:
            try:
                await store.messages.delete(message_id)
            except NotFoundError:
                continue
    return receipt


@endpoint
async def chat_stream(request: Request) -> Response:
    ctx = context(request)
    session_id = request.path_params["session_id"]
    dispatcher = _dispatcher(ctx)
    try:
        await ctx.store.sessions.get(session_id)
    except NotFoundError:
        return Response(status_code=204)
    subscription = _subscribe(ctx, session_id)
    try:
        active = await dispatcher.active_input(session_id)
    except BaseException:
        _unsubscribe(ctx, subscription)
        raise
    if active is None:
        _unsubscribe(ctx, subscription)
        return Response(status_code=204)
    return _respond(ctx, dispatcher, session_id, active.id, subscription)


def _subscribe(ctx: Context, session_id: str) -> FeedSubscription[Message]:
    """The session's messages from now on, counted among the app's streams (503 past the
    limit or while draining)."""
    ctx.hub.admit()
    subscription = ctx.store.messages.subscribe(
        session_id=session_id, buffer_size=ctx.stream_buffer
    )
    ctx.hub.add(subscription)
    return subscription


def _unsubscribe(ctx: Context, subscription: FeedSubscription[Message]) -> None:
    ctx.hub.discard(subscription)
    subscription.close()


def _respond(
    ctx: Context,
    dispatcher: ChatDispatcher,
    session_id: str,
    input_id: str,
    subscription: FeedSubscription[Message],
) -> Response:
    follower = _TurnFollower(ctx, dispatcher, session_id, input_id, subscription)
    return StreamingResponse(follower.frames(), media_type="text/event-stream", headers=HEADERS)


# -- following a turn -----------------------------------------------------------------------------


class _TurnFollower:
    """One stream: the input's turn, from its stored state, live to its end."""

    def __init__(
        self,
        ctx: Context,
        dispatcher: ChatDispatcher,
        session_id: str,
        input_id: str,
        subscription: FeedSubscription[Message],
    ) -> None:
        self._ctx = ctx
        self._dispatcher = dispatcher
        self._session_id = session_id
        self._input_id = input_id
        self._subscription = subscription
        self._encoder: TurnStreamEncoder | None = None
        self._turn: TurnRecord | None = None
        self._latest: dict[str, Message] = {}  # the newest state seen of each reply
        self._order: list[str] = []  # reply ids in creation order
        self._index = 0  # the step being streamed
        self._step: UIStreamEncoder | None = None
        self._sent_at = time.monotonic()
        self._force_cut = False  # the turn ended: close steps its writer left unfinished

    async def frames(self) -> AsyncIterator[bytes]:
        try:
            async for chunks in self._chunks():
                if chunks is _END:
                    yield DONE
                    return
                if chunks:
                    self._sent_at = time.monotonic()
                    yield b"".join(sse_chunk(c, dumps) for c in chunks)
                elif time.monotonic() - self._sent_at >= self._ctx.keepalive:
                    self._sent_at = time.monotonic()
                    yield b": keep-alive\n\n"
        finally:
            _unsubscribe(self._ctx, self._subscription)

    async def _chunks(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of chunks (empty: nothing new, time for a keep-alive check); ends after
        ``[DONE]`` or when the subscription ends (the server drains)."""
        turn_id = None
        while turn_id is None:
            record = await self._dispatcher.get_input(self._input_id)
            if record is not None and record.turn_id is not None:
                turn_id = record.turn_id
                break
            if record is None or record.outcome is not None:
                why = "the input is gone" if record is None else f"the input was {record.state}"
                yield TurnStreamEncoder(self._input_id, self._session_id).gone(why)
                yield _END
                return
            try:
                await self._wait(_POLL)
            except SubscriptionEnded:
                return
            yield []
        encoder = self._encoder = TurnStreamEncoder(turn_id, self._session_id)
        yield encoder.start()
        await self._read_turn()
        while True:
            out = self._pump()
            turn = self._turn
            if self._index >= len(self._order) and turn is not None and not turn.running:
                out += encoder.end(turn.state)
                yield out
                yield _END
                return
            if turn is None:  # gone with its session
                if self._step is not None:
                    out += self._step.cut()
                out += encoder.end("cancelled")
                yield out
                yield _END
                return
            if out:
                yield out
            # Waiting on what the feed does not announce (the turn's next message or its end)
            # is a poll; a step being streamed is followed on the feed alone.
            streaming = self._index < len(self._order) and self._turn_running_or_gone()
            try:
                event = await self._wait(max(_POLL, self._ctx.keepalive) if streaming else _POLL)
            except SubscriptionEnded:
                return
            except RevisionUnavailable:
                # Far behind: follow from now, and read what was missed from the database.
                try:
                    self._resubscribe()
                except ApiError:  # the server drains
                    return
                await self._read_turn()
                continue
            if event is None:
                await self._read_turn()
                if not self._turn_running_or_gone():
                    self._cut_unfinished()
                yield []
                continue
            yield await self._take(event)

    def _turn_running_or_gone(self) -> bool:
        return self._turn is None or self._turn.running

    def _cut_unfinished(self) -> None:
        """The turn ended and a re-read (``_read_turn``) still shows a step unfinished (its
        writer left it so, or died): from now on ``_pump`` encodes what is stored and closes
        such a step where it is, so that the stream ends."""
        self._force_cut = True

    async def _take(self, event: Event[Message]) -> list[dict[str, Any]]:
        message = event.payload
        if event.type is EventType.CREATED:
            await self._read_turn()
            return self._pump()
        if event.type is EventType.DELETED:
            if message.id in self._latest:
                self._latest.pop(message.id)
            return self._pump()
        known = self._latest.get(message.id)
        if known is None or message.revision <= known.revision:
            return []  # not this turn's, or older than what was read
        self._latest[message.id] = message
        step = self._step
        if step is not None and step.message_id == message.id:
            delta = event.delta if isinstance(event.delta, MessageDelta) else None
            out = step.update(message, delta)
            if step.done:
                self._step = None
                self._index += 1
                out += self._pump()
            return out
        return self._pump()

    def _pump(self) -> list[dict[str, Any]]:
        """Encode from the current step on, as far as the replies are complete."""
        out: list[dict[str, Any]] = []
        encoder = self._encoder
        assert encoder is not None
        while self._index < len(self._order):
            message_id = self._order[self._index]
            message = self._latest.get(message_id)
            step = self._step
            if message is None:  # deleted
                if step is not None:
                    out += step.deleted()
                self._step = None
                self._index += 1
                continue
            if step is None or step.message_id != message_id:
                step = self._step = encoder.step(message_id)
            out += step.encode(message)
            if not step.done and self._force_cut:
                out += step.cut()
            if step.done:
                self._step = None
                self._index += 1
                continue
            break
        return out

    async def _read_turn(self) -> None:
        encoder = self._encoder
        assert encoder is not None
        turn = await self._dispatcher.get_turn(encoder.turn_id)
        self._turn = turn
        if turn is None:
            return
        for message in turn.replies:
            known = self._latest.get(message.id)
            if known is None or message.revision > known.revision:
                self._latest[message.id] = message
            if message.id not in self._order:
                self._order.append(message.id)

    async def _wait(self, seconds: float) -> Event[Message] | None:
        return await next_event(self._subscription, seconds)

    def _resubscribe(self) -> None:
        _unsubscribe(self._ctx, self._subscription)
        self._subscription = _subscribe(self._ctx, self._session_id)


_END: list[dict[str, Any]] = []
"""Yielded by ``_TurnFollower._chunks`` (by identity) once the turn's stream is complete."""


routes = [
    Route("/api/chat", post_chat, methods=["POST"]),
    Route("/api/chat/{session_id}/stream", chat_stream, methods=["GET"]),
]
