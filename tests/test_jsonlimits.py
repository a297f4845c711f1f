"""mpai.jsonlimits.loads_bounded: size, then depth, then strict JSON."""

from __future__ import annotations

import json

import pytest

from mpai.chat.validation import PAGE_TITLE_MAX_CHARS, PAGE_URL_MAX_CHARS
from mpai.conf import DEFAULTS
from mpai.exceptions import InvalidJson
from mpai.jsonlimits import JsonTooDeep, JsonTooLarge, json_depth, loads_bounded

BIG = 1 << 20


def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ('"[[[{"', 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}], "c": {}}', 4),
        ('{"a": "]]]}}}", "b": [[["[[[["]]]}', 4),
        (r'{"a": "quote \" [[[ and backslash \\", "b": [1]}', 2),
        (nest(40), 40),
    ],
)
def test_depth_counts_brackets_outside_strings_only(text, depth):
    assert json_depth(text) == depth


def test_a_document_at_max_depth_is_parsed_and_one_deeper_is_refused():
    assert loads_bounded(nest(5), max_bytes=BIG, max_depth=5) == [[[[[]]]]]
    with pytest.raises(JsonTooDeep, match="nested more than 5 levels"):
        loads_bounded(nest(6), max_bytes=BIG, max_depth=5)


def test_depth_past_the_interpreters_recursion_limit_is_invalid_json_not_recursion_error():
    with pytest.raises(InvalidJson) as caught:
        loads_bounded(nest(50_000), max_bytes=BIG, max_depth=10**9)
    assert caught.value.code == "invalid_json"


def test_size_is_counted_in_utf8_bytes():
    text = json.dumps("😀" * 10, ensure_ascii=False)  # 42 bytes, 12 characters
    assert loads_bounded(text, max_bytes=42, max_depth=1) == "😀" * 10
    with pytest.raises(JsonTooLarge, match="larger than 41 bytes"):
        loads_bounded(text, max_bytes=41, max_depth=1)
    with pytest.raises(JsonTooLarge):
        loads_bounded(text.encode(), max_bytes=41, max_depth=1)


def test_size_is_checked_before_depth():
    with pytest.raises(JsonTooLarge):
        loads_bounded(nest(100), max_bytes=100, max_depth=5)


def test_bytes_must_be_utf8():
    assert loads_bounded('{"a": "ü"}'.encode(), max_bytes=BIG, max_depth=2) == {"a": "ü"}
    with pytest.raises(InvalidJson, match="not UTF-8"):
        loads_bounded(b'{"a": "\xff"}', max_bytes=BIG, max_depth=2)


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", "[1,]", "NaN", "[Infinity]", "-Infinity"])
def test_malformed_json_and_non_finite_numbers_are_invalid(text):
    with pytest.raises(InvalidJson) as caught:
        loads_bounded(text, max_bytes=BIG, max_depth=5)
    assert caught.value.code == "invalid_json"
    assert caught.value.detail.startswith("The frame is not valid JSON")


def test_details_name_the_input():
    with pytest.raises(InvalidJson, match="The request body is not valid JSON"):
        loads_bounded("{", max_bytes=BIG, max_depth=5, what="request body")


def test_a_lone_surrogate_escape_parses_for_validation_to_refuse():
    # JSON allows "\ud800"; the chat validators refuse it (mpai.chat.validation).
    assert loads_bounded('{"t": "\\ud800"}', max_bytes=BIG, max_depth=1) == {"t": "\ud800"}


def test_the_largest_valid_chat_message_fits_the_default_limits_even_ascii_escaped():
    frame = {
        "type": "chat.message",
        "conversation": 2**63 - 1,
        "content": "😀" * DEFAULTS["MAX_MESSAGE_LENGTH"],
        "client_id": "😀" * 64,
        "page": {"url": "😀" * PAGE_URL_MAX_CHARS, "title": "😀" * PAGE_TITLE_MAX_CHARS},
        "cache": False,
    }
    text = json.dumps(frame)  # ensure_ascii: 12 bytes a character
    parsed = loads_bounded(
        text, max_bytes=DEFAULTS["MAX_FRAME_BYTES"], max_depth=DEFAULTS["MAX_JSON_DEPTH"]
    )
    assert parsed == frame
