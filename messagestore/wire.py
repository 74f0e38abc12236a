"""Messages as JSON: the form the HTTP service answers and streams, and ``export`` writes.

::

    from messagestore.wire import message_from_json, message_json

    document = message_json(message)     # {"id", "session_id", "role", ..., "parts", "revision"}
    same = message_from_json(document)   # strict: ValueError naming what is wrong

A message's object has the keys ``id, session_id, role, model, provider, created_at,
updated_at, is_summary_message, finished, parts, revision``: ``parts`` as ``{"type": TAG,
"data": {...}}`` objects, bytes in base64, times in ISO 8601 with their offset, ``finished``
whether the parts hold a finish, ``revision`` the revision that stored this state. The wire
deltas (``messagestore.MessageDelta``) apply to it. ``MAX_REVISION`` is the largest revision
there can be (the columns hold a signed 64-bit integer): a resume point above it is not one.
"""

from ._feed._subscription import MAX_REVISION
from ._message_json import message_from_json, message_json

__all__ = ["MAX_REVISION", "message_from_json", "message_json"]
