"""Input validation for chat messages."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from mpai.conf import mpai_settings
from mpai.exceptions import InvalidMessage, MessageTooLong

_ALLOWED_CONTROLS = frozenset("\n\r\t")

# Longest ``page.url`` and ``page.title`` accepted (characters): 2,048 is the URL length
# every browser and CDN handles; 300 is well past any title a tab can show.
PAGE_URL_MAX_CHARS = 2048
PAGE_TITLE_MAX_CHARS = 300
_PAGE_LIMITS = (("url", PAGE_URL_MAX_CHARS), ("title", PAGE_TITLE_MAX_CHARS))
# Unicode categories Cc (C0, DEL, C1) and Cs (surrogates, which cannot be encoded).
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def validate_content(content: object) -> str:
    """Return ``content`` if it is an acceptable chat message.

    Rules: a string, not empty or whitespace-only, no control characters other than
    tab and newlines (Unicode categories Cc and Cs; PostgreSQL also refuses NUL), at
    most ``MPAI["MAX_MESSAGE_LENGTH"]`` characters.

    Raises:
        InvalidMessage: not a string, empty, whitespace-only, or with control characters.
        MessageTooLong: longer than the maximum length.
    """
    if not isinstance(content, str) or not content.strip():
        raise InvalidMessage("The message is empty.")
    limit = mpai_settings.MAX_MESSAGE_LENGTH
    if len(content) > limit:
        raise MessageTooLong(f"The message is longer than {limit} characters.")
    for char in content:
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidMessage("The message contains control characters.")
    return content


def validate_client_id(client_id: object) -> str | None:
    """Return the client's idempotency id (1 to 64 characters) or None when absent.

    Raises:
        InvalidMessage: present but not a string of 1 to 64 printable characters.
    """
    if client_id is None:
        return None
    if (
        not isinstance(client_id, str)
        or not 1 <= len(client_id) <= 64
        or not client_id.isprintable()
    ):
        raise InvalidMessage("client_id must be a string of 1 to 64 printable characters.")
    return client_id


def validate_page(page: object) -> dict[str, Any] | None:
    """Return the page the user is on as ``{"url"?: str, "title"?: str}``, or None.

    The optional ``page`` field of a chat message (README, "Websocket"): an object with
    an optional ``url`` (at most 2,048 characters) and ``title`` (at most 300); keys
    other than these two are dropped, and so are ``null`` values. Neither may hold
    control characters (tabs and newlines included) or lone surrogates, which no
    encoder can write to the database or the provider.

    Raises:
        InvalidMessage: ``page`` is present but not an object, or a field is not a
            string, is too long, or holds control characters; the detail names it.
    """
    if page is None:
        return None
    if not isinstance(page, dict):
        raise InvalidMessage("page must be an object with optional url and title strings.")
    clean: dict[str, Any] = {}
    for key, limit in _PAGE_LIMITS:
        value = page.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidMessage(f"page.{key} must be a string.")
        if len(value) > limit:
            raise InvalidMessage(f"page.{key} is longer than {limit} characters.")
        if _CONTROL_OR_SURROGATE.search(value):
            raise InvalidMessage(f"page.{key} contains control characters.")
        clean[key] = value
    return clean


def validate_resume_from(value: object) -> int:
    """Return the ``resume_from`` of a resend: characters of the reply the client has.

    The optional field of a ``chat.message`` that repeats a ``client_id``: the replay
    then sends only the reply's text after that many characters. Absent (None) is 0.

    Raises:
        InvalidMessage: present but not a non-negative integer (``true``/``false`` and
            ``1.0`` are refused too).
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMessage(
            "resume_from must be a non-negative integer: the characters of the reply "
            "the client already has."
        )
    return value
