"""Parts round-trip exactly through their JSON text; bad text is a clear CorruptRow."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messagestore import (
    Binary,
    CorruptRow,
    Finish,
    FinishReason,
    ImageURL,
    Reasoning,
    Text,
    ToolCall,
    ToolResult,
)
from messagestore._codec import decode_parts, encode_parts

aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
text = st.text()  # hypothesis' text() includes NUL and non-ASCII, excludes lone surrogates
parts = st.one_of(
    st.builds(Text, text),
    st.builds(Reasoning, text, text, st.none() | aware, st.none() | aware),
    st.builds(ImageURL, text, text),
    st.builds(Binary, text, text, st.binary()),
    st.builds(ToolCall, text, text, text, st.booleans(), st.booleans()),
    st.builds(ToolResult, text, text, text, text, st.booleans()),
    st.builds(Finish, st.sampled_from(FinishReason), aware, text, text),
)


@given(st.lists(parts, max_size=8))
def test_any_parts_round_trip(original: list[object]) -> None:
    assert decode_parts("m", encode_parts(original)) == original  # type: ignore[arg-type]


def test_edge_values_round_trip() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5)))
    original = [
        Text(""),
        Text("\x00nul, emoji 🧪, ünïcödé, \ud800 lone surrogate"),
        Binary("", "application/octet-stream", bytes(range(256))),
        Reasoning("", "", when, None),
        Finish(FinishReason.ERROR, when, "", ""),
    ]
    encoded = encode_parts(original)  # type: ignore[arg-type]
    assert encoded.isascii()
    assert decode_parts("m", encoded) == original


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("not json", "Expecting value"),
        ('{"type": "text"}', "not a JSON array"),
        ("[1]", "part 0 is not an object"),
        ('[{"type": "video", "data": {}}]', "unknown type 'video'"),
        ('[{"type": "text", "data": {}}]', "field 'text' is missing"),
        ('[{"type": "text", "data": {"text": 1}}]', "not a string"),
        ('[{"type": "binary", "data": {"mime_type": "a", "data": "%%%"}}]', "binary"),
        (
            '[{"type": "finish", "data": {"reason": "bored", "time": "2020-01-01T00:00:00Z"}}]',
            "bored",
        ),
        ('[{"type": "reasoning", "data": {"started_at": "2020-01-01T00:00:00"}}]', "time zone"),
    ],
)
def test_corrupt_text_names_the_message(stored: str, reason: str) -> None:
    with pytest.raises(CorruptRow, match=reason) as caught:
        decode_parts("msg-42", stored)
    assert "msg-42" in str(caught.value)
    assert caught.value.row_id == "msg-42"


@given(st.lists(parts, max_size=6))
def test_fast_encoding_equals_the_plain_json_form(original: list[object]) -> None:
    from messagestore._codec import _encode_part

    plain = json.dumps([_encode_part(p) for p in original], separators=(",", ":"))  # type: ignore[arg-type]
    assert encode_parts(original) == plain  # type: ignore[arg-type]


def test_equal_instants_keep_their_own_offsets() -> None:
    """Parts with the same instants at other offsets compare equal; each still encodes its own."""
    plus2 = timezone(timedelta(hours=2))
    at = datetime(2025, 1, 1, 12, tzinfo=UTC)
    for utc, shifted in [
        (Finish(FinishReason.END_TURN, at), Finish(FinishReason.END_TURN, at.astimezone(plus2))),
        (Reasoning("r", "", at, at), Reasoning("r", "", at.astimezone(plus2), at)),
        (Reasoning("r", "", at, at), Reasoning("r", "", at, at.astimezone(plus2))),
    ]:
        assert utc == shifted
        assert "+00:00" in encode_parts([utc])
        assert "+02:00" in encode_parts([shifted])
        assert decode_parts("m", encode_parts([shifted])) == [shifted]
