import pytest

from mpai.chat.validation import validate_client_id, validate_content
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
