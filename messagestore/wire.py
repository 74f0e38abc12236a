"""Messages as JSON: the form the HTTP service answers and streams, and ``export`` writes.

::

    document = message_json(message)     # {"id", "session_id", "role", ..., "parts", "revision"}
    same = message_from_json(document)   # strict: ValueError naming what is wrong

``parts`` are ``{"type": TAG, "data": {...}}`` objects (bytes in base64, times ISO 8601 with
offset), ``finished`` whether the parts hold a finish, ``revision`` the revision that stored
the state; ``MessageDelta`` applies to it. ``MAX_REVISION`` (2**63 - 1) is the largest revision.
"""

from ._feed._subscription import MAX_REVISION
from ._message_json import message_from_json, message_json

__all__ = ["MAX_REVISION", "message_from_json", "message_json"]
