"""The wire format of a turn: websocket frames (and, later, the same frames as SSE).

Built from the pipeline's events (:mod:`mpai.chat.turns`) by the interfaces only; the
pipeline knows nothing of frames. The frames are listed in README, "Websocket".
"""

from __future__ import annotations

from typing import Any

from mpai.chat.turns import Delta, Event, Finished, Started, ToolEvent, TurnResult
from mpai.exceptions import MpaiError


def started_frame(event: Started) -> dict[str, Any]:
    """``chat.started``: the ids of the exchange."""
    return {
        "type": "chat.started",
        "conversation": event.conversation_id,
        "message": event.message_id,
        "user_message": event.user_message_id,
        "client_id": event.client_id,
    }


def tool_frame(event: ToolEvent) -> dict[str, Any]:
    """``chat.tool``: ``{"type", "name", "call_id", "status"}``, status ``started``
    before a call runs; then ``ok``, ``error`` or ``cancelled`` with ``duration_ms``
    (ms, a float)."""
    frame: dict[str, Any] = {
        "type": "chat.tool",
        "name": event.name,
        "call_id": event.call_id,
        "status": event.status,
    }
    if event.duration_ms is not None:
        frame["duration_ms"] = event.duration_ms
    return frame


def error_frame(error: MpaiError, *, message_id: int | None = None) -> dict[str, Any]:
    """``chat.error`` for ``error``; ``message_id`` when a partial reply was saved."""
    return {"type": "chat.error", **error.as_payload(message_id=message_id)}


def completed_fields(result: TurnResult) -> dict[str, Any]:
    """The fields of ``chat.completed`` (also the HTTP reply's), JSON-ready."""
    fields: dict[str, Any] = {
        "message": result.message.pk,
        "status": result.status,
        "finish_reason": result.finish_reason,
        "cached": result.cached,
        "replayed": result.replayed,
        "usage": result.usage.as_dict() if result.usage else None,
        "timings_ms": result.timings_ms,
    }
    if result.refusal:
        fields["refusal"] = True
    return fields


def final_frame(result: TurnResult) -> dict[str, Any]:
    """``chat.completed`` or ``chat.error``: the frame that ends a turn."""
    if result.error is not None:
        return error_frame(result.error, message_id=result.partial_message_id)
    return {"type": "chat.completed", **completed_fields(result)}


def frame_for(event: Event) -> dict[str, Any]:
    """The frame of any event."""
    if isinstance(event, Delta):
        return {"type": "chat.delta", "text": event.text}
    if isinstance(event, Started):
        return started_frame(event)
    if isinstance(event, ToolEvent):
        return tool_frame(event)
    if isinstance(event, Finished):
        return final_frame(event.result)
    raise TypeError(f"no frame for {event!r}")
