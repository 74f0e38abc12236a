"""Messages and sessions as JSON: the form ``messagestore export --format json`` writes.

A message is ``message_json``'s object (``messagestore.wire``, shared with the wire
deltas): the export's message object plus the revision that stored this state. A session is
the export's session object plus its ``revision``.

Text is encoded as UTF-8 JSON. Parts may hold lone surrogates (the store keeps anything a
caller streamed); a document that cannot be encoded as UTF-8 is sent with every non-ASCII
character escaped instead, which JSON allows and every parser reads back to the same string.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .. import Session
from ..wire import message_json

__all__ = ["dumps", "message_json", "session_json"]


def session_json(session: Session) -> dict[str, Any]:
    """The JSON object for one session (see the module docstring)."""
    return {
        "id": session.id,
        "title": session.title,
        "parent_session_id": session.parent_session_id,
        "message_count": session.message_count,
        "prompt_tokens": session.prompt_tokens,
        "completion_tokens": session.completion_tokens,
        "cost": session.cost if math.isfinite(session.cost) else None,
        "summary_message_id": session.summary_message_id,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "revision": session.revision,
    }


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON on one line (no raw newline, so it fits an SSE
    ``data:`` field); ASCII-escaped if it holds a lone surrogate."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")
