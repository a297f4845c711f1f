"""Bounded JSON parsing for websocket frames and request bodies.

``json.loads`` recurses once per nesting level, so a frame or body nested about 1,000
deep raises ``RecursionError`` (Python's recursion limit); it also reads input of any
size. :func:`loads_bounded` checks the size first, then the nesting depth with a scan of
the brackets outside strings (regular expressions, no Python loop per character), and
only then parses. Every refusal is :class:`~mpai.exceptions.InvalidJson` (code
``invalid_json``); a size refusal is its subclass :class:`JsonTooLarge`, which the HTTP
API answers with 413.

Usage::

    from mpai.jsonlimits import loads_bounded
    data = loads_bounded(text, max_bytes=mpai_settings.MAX_FRAME_BYTES,
                         max_depth=mpai_settings.MAX_JSON_DEPTH)
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from mpai.exceptions import InvalidJson

# A JSON string: quote, then runs of plain characters or escapes, then quote (unrolled,
# so the engine never backtracks).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonTooLarge(InvalidJson):
    """The input is larger than ``max_bytes``."""

    default_detail = "The frame is too large."


class JsonTooDeep(InvalidJson):
    """The input nests deeper than ``max_depth``."""

    default_detail = "The frame is nested too deeply."


def json_depth(text: str) -> int:
    """Return the deepest nesting of arrays and objects in ``text`` (0 for a scalar).

    Brackets inside strings do not count. On malformed input the figure is a guess
    (the parser refuses such input anyway).
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets))))


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_bounded(text: str | bytes, *, max_bytes: int, max_depth: int, what: str = "frame") -> Any:
    """Parse ``text`` (a str, or UTF-8 bytes) as strict JSON within the given limits.

    Args:
        text: the frame or body.
        max_bytes: the most bytes accepted (a str is measured as UTF-8).
        max_depth: the most nested arrays and objects accepted (``{"a": [1]}`` is 2).
        what: how error details name the input ("frame", "request body").

    Returns:
        The parsed value (any JSON type: callers check for an object).

    Raises:
        JsonTooLarge: more than ``max_bytes``.
        JsonTooDeep: nested deeper than ``max_depth``.
        InvalidJson: not UTF-8, not JSON, or ``NaN``/``Infinity`` (not JSON either).
    """
    if isinstance(text, bytes | bytearray):
        size = len(text)
    elif len(text) > max_bytes:
        size = len(text)  # at least one byte a character: too large either way
    elif 4 * len(text) <= max_bytes:
        size = 0  # at most four bytes a character: small enough either way
    else:
        size = _utf8_size(text)
    if size > max_bytes:
        raise JsonTooLarge(f"The {what} is larger than {max_bytes} bytes.")
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidJson(f"The {what} is not UTF-8 text.") from None
    if json_depth(text) > max_depth:
        raise JsonTooDeep(f"The {what} is nested more than {max_depth} levels deep.")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # a site set MAX_JSON_DEPTH past the interpreter's limit
        raise JsonTooDeep(f"The {what} is nested too deeply.") from None
    except ValueError as exc:
        raise InvalidJson(f"The {what} is not valid JSON: {exc}") from None
