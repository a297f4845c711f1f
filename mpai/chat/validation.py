"""Input validation for chat messages."""

from __future__ import annotations

import unicodedata

from mpai.conf import mpai_settings
from mpai.exceptions import InvalidMessage, MessageTooLong

_ALLOWED_CONTROLS = frozenset("\n\r\t")


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
