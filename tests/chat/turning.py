"""Drive a :class:`~mpai.chat.turns.TurnStream` in tests."""

from __future__ import annotations

from collections.abc import Callable

from mpai.chat.turns import Delta, Finished, TurnResult, TurnStream


def drive(events: TurnStream, on_delta: Callable[[str], object] | None = None) -> TurnResult:
    """Read every event; call ``on_delta`` with each delta's text; return the result."""
    result: TurnResult | None = None
    with events:
        for event in events:
            if isinstance(event, Delta) and on_delta is not None:
                on_delta(event.text)
            elif isinstance(event, Finished):
                result = event.result
    assert result is not None, "the stream ended without Finished"
    return result
