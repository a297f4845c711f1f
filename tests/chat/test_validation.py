import pytest

from mpai.chat.validation import validate_client_id, validate_content, validate_page
from mpai.exceptions import InvalidMessage, MessageTooLong


@pytest.mark.parametrize("content", ["", "   ", "\n\t ", None, 42, ["x"]])
def test_empty_whitespace_or_non_text_is_invalid(content):
    with pytest.raises(InvalidMessage):
        validate_content(content)


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\ud800"])
def test_control_characters_are_invalid(char):
    with pytest.raises(InvalidMessage):
        validate_content(f"hello {char} world")


def test_tabs_and_newlines_are_kept():
    assert validate_content("a\tb\r\nc") == "a\tb\r\nc"


def test_length_limit_comes_from_settings(settings):
    settings.MPAI = {**settings.MPAI, "MAX_MESSAGE_LENGTH": 10}
    assert validate_content("x" * 10) == "x" * 10
    with pytest.raises(MessageTooLong):
        validate_content("x" * 11)


@pytest.mark.parametrize("client_id", ["", "x" * 65, 5, "bad\x00id"])
def test_bad_client_ids(client_id):
    with pytest.raises(InvalidMessage):
        validate_client_id(client_id)


def test_client_id_optional():
    assert validate_client_id(None) is None
    assert validate_client_id("abc-1") == "abc-1"


def test_page_absent_is_none():
    assert validate_page(None) is None


def test_page_keeps_url_and_title_and_drops_other_keys_and_nulls():
    page = {"url": "https://example.com/a?b=1", "title": "Plans – ü 😀", "x": [1], "y": None}
    assert validate_page(page) == {"url": "https://example.com/a?b=1", "title": "Plans – ü 😀"}
    assert validate_page({"url": None, "other": "x"}) == {}


@pytest.mark.parametrize("page", ["https://example.com", ["url"], 3, True])
def test_page_that_is_not_an_object_is_invalid(page):
    with pytest.raises(InvalidMessage, match="page must be an object"):
        validate_page(page)


@pytest.mark.parametrize("key", ["url", "title"])
@pytest.mark.parametrize("value", [5, ["x"], {"a": "b"}, False])
def test_page_fields_must_be_strings(key, value):
    with pytest.raises(InvalidMessage, match=f"page.{key} must be a string"):
        validate_page({key: value})


@pytest.mark.parametrize("key", ["url", "title"])
@pytest.mark.parametrize("char", ["\ud800", "\x00", "\n", "\t", "\x1b", "\x7f", "\x85"])
def test_page_fields_with_surrogates_or_control_characters_are_invalid(key, char):
    with pytest.raises(InvalidMessage, match=f"page.{key} contains control characters"):
        validate_page({key: f"a{char}b"})


@pytest.mark.parametrize(("key", "limit"), [("url", 2048), ("title", 300)])
def test_page_field_length_limits(key, limit):
    assert validate_page({key: "x" * limit}) == {key: "x" * limit}
    with pytest.raises(InvalidMessage, match=f"page.{key} is longer than {limit} characters"):
        validate_page({key: "x" * (limit + 1)})
