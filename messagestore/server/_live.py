"""The streaming routes: ``GET /api/events`` (the change feed as Server-Sent Events) and
``GET /api/messages/{id}/ui-stream`` (one message as the AI SDK UI message stream).

Every frame's ``id:`` is the subscription's resume point after it: a client resuming there
(``Last-Event-ID`` or ``since``) gets everything it missed and nothing twice. A message's first
frame on a connection is whole, later ones ``event: delta`` when the feed's delta starts at the
state this connection sent last; anything else is sent whole. A resume point the feed cannot
serve ends the stream with ``event: reset``. The wire format: README, "HTTP service"; frame by
frame: docs/MODULES.md; the feed behind it: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pubsub import Event, EventType, SubscriptionEnded, WouldBlock

from .. import (
    FeedSubscription,
    Message,
    MessageDelta,
    RevisionCompacted,
    RevisionFromFuture,
    RevisionUnavailable,
)
from ._context import Context, context, endpoint
from ._errors import ApiError
from ._json import dumps, message_json
from ._streams import next_event
from ._ui_stream import DONE, HEADERS, UIStreamEncoder, sse_chunk
from ._validate import parse_revision, query_revision

__all__ = ["REMEMBERED", "routes"]

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_RETRY_MS = 2000
_BATCH = 64  # events taken without waiting before one write to the socket

REMEMBERED = 10_000
"""Messages per connection whose last sent revision is kept (for deltas)."""

_DELTAS = {"1": True, "true": True, "0": False, "false": False}


class _FrameCache:
    """The ``event:`` and ``data:`` lines of recent frames, shared by every stream: one JSON
    encoding per stored state (whole) and per (message, base, revision) (delta), however many
    clients it goes to. Bounded: the oldest entries are forgotten first."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._whole: dict[tuple[str, int, str], bytes] = {}
        self._deltas: dict[tuple[str, int, int], bytes] = {}

    def whole(self, kind: EventType, message: Message) -> bytes:
        key = (message.id, message.revision, kind.value)
        frame = self._whole.get(key)
        if frame is None:
            frame = b"event: " + kind.value.encode() + b"\ndata: " + dumps(message_json(message))
            if len(self._whole) >= self._size:
                del self._whole[next(iter(self._whole))]
            self._whole[key] = frame
        return frame

    def delta(self, delta: MessageDelta) -> bytes:
        key = (delta.id, delta.base, delta.revision)
        frame = self._deltas.get(key)
        if frame is None:
            frame = b"event: delta\ndata: " + dumps(delta.to_json())
            if len(self._deltas) >= self._size:
                del self._deltas[next(iter(self._deltas))]
            self._deltas[key] = frame
        return frame


_cache = _FrameCache()


class _Connection:
    """What one ``/api/events`` connection sent: the revision it last sent of each unfinished
    message (see the module docstring), and so whether a change can go as a delta."""

    def __init__(self, deltas: bool, remembered: int = REMEMBERED) -> None:
        self._deltas = deltas
        self._remembered = remembered
        self._sent: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sent)

    def frame(self, event: Event[Message], resume: int | None) -> bytes:
        """The frame for ``event``, with ``resume`` (the resume point after it) as ``id:``."""
        message = event.payload
        sent = self._sent
        base = sent.pop(message.id, None)  # re-inserted below: the most recently sent last
        delta = event.delta
        if (
            base is not None
            and isinstance(delta, MessageDelta)
            and delta.base == base
            and delta.revision == message.revision
            and event.type is EventType.UPDATED
        ):
            data = _cache.delta(delta)
        else:
            data = _cache.whole(event.type, message)
        if self._deltas and event.type is not EventType.DELETED and not message.is_finished:
            sent[message.id] = message.revision
            if len(sent) > self._remembered:
                sent.popitem(last=False)
        return f"id: {resume}\n".encode() + data + b"\n\n"


def query_deltas(request: Request) -> bool:
    """The ``deltas`` query parameter: ``1``/``true`` (the default) or ``0``/``false``."""
    text = request.query_params.get("deltas")
    if text is None:
        return True
    deltas = _DELTAS.get(text)
    if deltas is None:
        raise ApiError(422, f"query parameter 'deltas' must be 1, true, 0 or false, not {text!r}")
    return deltas


def _open(ctx: Context, *, session_id: str | None, since: int | None) -> FeedSubscription[Message]:
    ctx.hub.admit()
    subscription = ctx.store.messages.subscribe(
        session_id=session_id, since=since, buffer_size=ctx.stream_buffer
    )
    ctx.hub.add(subscription)
    return subscription


@endpoint
async def events(request: Request) -> Response:
    ctx = context(request)
    session_id = request.query_params.get("session_id") or None
    since = query_revision(request, "since")
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None and last_event_id.strip():
        since = parse_revision(last_event_id, "the Last-Event-ID header")
    deltas = query_deltas(request)
    if session_id is not None:
        await ctx.store.sessions.get(session_id)
    subscription = _open(ctx, session_id=session_id, since=since)
    return StreamingResponse(
        _event_frames(ctx, subscription, _Connection(deltas)),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


def _moved_on(subscription: FeedSubscription[Message], sent: int | None) -> int | None:
    """The subscription's resume point if it moved past ``sent``, the last ``id:`` sent (events
    it skipped move it without a frame); None if the client already has it."""
    revision = subscription.revision
    return revision if revision is not None and revision != sent else None


async def _event_frames(
    ctx: Context, subscription: FeedSubscription[Message], connection: _Connection
) -> AsyncIterator[bytes]:
    sent: int | None = subscription.revision
    try:
        yield f"retry: {_RETRY_MS}\n".encode() + (
            b"\n" if sent is None else f"id: {sent}\n\n".encode()
        )
        while True:
            try:
                event = _ready(subscription) or await next_event(subscription, ctx.keepalive)
            except SubscriptionEnded:
                return
            except RevisionUnavailable as exc:
                reset = {"code": _reset_code(exc), "message": str(exc)}
                yield b"event: reset\ndata: " + dumps(reset) + b"\n\n"
                return
            if event is None:
                moved = _moved_on(subscription, sent)
                if moved is not None:
                    sent = moved
                    yield f"id: {moved}\n\n".encode()
                else:
                    yield b": keep-alive\n\n"
                continue
            sent = subscription.revision
            frames = [connection.frame(event, sent)]
            # Take what is already queued, so a busy stream writes once per batch.
            while len(frames) < _BATCH and subscription.pending:
                try:
                    more = subscription.receive_nowait()
                except (WouldBlock, SubscriptionEnded):
                    break
                sent = subscription.revision
                frames.append(connection.frame(more, sent))
            # Events the subscription skipped after the last frame (already delivered, or
            # below its replay) may have moved the resume point on: send it now, or the
            # client would only learn it with the next event.
            moved = _moved_on(subscription, sent)
            if moved is not None:
                sent = moved
                frames.append(f"id: {moved}\n\n".encode())
            yield b"".join(frames)
    finally:
        ctx.hub.discard(subscription)
        subscription.close()


def _reset_code(error: RevisionUnavailable) -> str:
    """The ``code`` of an ``event: reset``."""
    if isinstance(error, RevisionCompacted):
        return "revision_compacted"
    if isinstance(error, RevisionFromFuture):
        return "revision_from_future"
    return "revision_unavailable"


def _ready(subscription: FeedSubscription[Message]) -> Event[Message] | None:
    """An event already queued, without arming a keep-alive timer (the busy path)."""
    if not subscription.pending:
        return None
    try:
        return subscription.receive_nowait()
    except WouldBlock:
        return None


@endpoint
async def ui_stream(request: Request) -> Response:
    ctx = context(request)
    message = await ctx.store.messages.get(request.path_params["message_id"])
    subscription = _open(ctx, session_id=message.session_id, since=message.revision)
    return StreamingResponse(
        _ui_frames(ctx, message, subscription),
        media_type="text/event-stream",
        headers=HEADERS,
    )


async def _ui_frames(
    ctx: Context, message: Message, subscription: FeedSubscription[Message]
) -> AsyncIterator[bytes]:
    encoder = UIStreamEncoder(message.id)
    try:
        frames = b"".join(sse_chunk(c, dumps) for c in encoder.encode(message))
        while True:
            if encoder.done:
                yield frames + DONE
                return
            if frames:
                yield frames
            frames = b""
            try:
                event = await next_event(subscription, ctx.keepalive)
            except SubscriptionEnded:
                return
            except RevisionUnavailable:
                # Far behind: start again from the stored state, diffed against what was sent.
                ctx.hub.discard(subscription)
                subscription.close()
                try:
                    message = await ctx.store.messages.get(message.id)
                except LookupError:
                    frames = b"".join(sse_chunk(c, dumps) for c in encoder.deleted())
                    continue
                subscription = _open(ctx, session_id=message.session_id, since=message.revision)
                frames = b"".join(sse_chunk(c, dumps) for c in encoder.encode(message))
                continue
            if event is None:
                yield b": keep-alive\n\n"
                continue
            if event.payload.id != message.id:
                continue
            if event.type is EventType.DELETED:
                chunks = encoder.deleted()
            else:
                chunks = encoder.update(event.payload, event.delta)
            frames = b"".join(sse_chunk(c, dumps) for c in chunks)
    finally:
        ctx.hub.discard(subscription)
        subscription.close()


routes = [
    Route("/api/events", events, methods=["GET"]),
    Route("/api/messages/{message_id}/ui-stream", ui_stream, methods=["GET"]),
]
