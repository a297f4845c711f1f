"""``POST /api/mpai/v1/chat/``: one chat turn over HTTP, answered when the reply is saved.

The same pipeline as the websocket; for clients that cannot keep a websocket open.
Errors use the websocket's codes, ``{"code", "detail", "retry_after"?, "message"?}``,
with each error's own HTTP status (``MpaiError.status_code``): 400 (invalid_message,
message_too_long, invalid_json), 401 (not signed in), 404 (conversation_not_found),
413 (a body over ``MAX_FRAME_BYTES``), 429 with a ``Retry-After`` header (rate_limited),
500 (internal_error), 502 (provider errors), 503 with ``Retry-After`` (overloaded: no
stream slot came free, :mod:`mpai.chat.capacity`), 504 (provider_timeout).

With ``Accept: text/event-stream`` the reply streams as Server-Sent Events carrying the
websocket's frames (:mod:`mpai.api.sse`); a refusal before the turn starts keeps its
HTTP status and is one ``chat.error`` event.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, HttpResponseBase
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mpai.api import sse
from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.parsers import BoundedJSONParser
from mpai.api.schema import CHAT_SCHEMA
from mpai.chat.capacity import stream_slots
from mpai.chat.pipeline import ChatPipeline
from mpai.exceptions import MpaiError, RateLimited
from mpai.frames import completed_fields, error_frame
from mpai.metrics import prometheus as metrics


class ChatRequestSerializer(serializers.Serializer):
    conversation = serializers.IntegerField(required=False, allow_null=True, default=None)
    content = serializers.CharField(trim_whitespace=False, allow_blank=True)
    client_id = serializers.CharField(required=False, allow_null=True, default=None)
    page = serializers.DictField(required=False, allow_null=True, default=None)
    cache = serializers.BooleanField(required=False, default=True)
    # A resend's characters of the reply already received (the replay sends the rest).
    resume_from = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0
    )


def turn_arguments(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's arguments (``ChatPipeline.stream``/``complete``) from a validated
    :class:`ChatRequestSerializer`."""
    return {
        "user": request.user,
        "content": data["content"],
        "conversation_id": data["conversation"],
        "client_id": data["client_id"],
        "page": data["page"],
        "use_cache": data["cache"],
        "resume_from": data["resume_from"],
    }


def retry_after_headers(error: MpaiError) -> dict[str, str]:
    """``{"Retry-After": <whole seconds, rounded up>}`` when ``error`` has one, else ``{}``."""
    if error.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}


def error_response(error: MpaiError, *, message_id: int | None = None) -> Response:
    """Return the HTTP response for ``error``: its payload and its ``status_code``."""
    return Response(
        error.as_payload(message_id=message_id),
        status=error.status_code,
        headers=retry_after_headers(error),
    )


class ChatView(AuthenticateHeaderMixin, APIView):
    """Send a message and get the whole reply (see the module docstring)."""

    schema = AutoSchema()
    permission_classes = [permissions.IsAuthenticated]
    # JSON only, within MAX_FRAME_BYTES and MAX_JSON_DEPTH (mpai.api.parsers).
    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer, sse.EventStreamRenderer]
    pipeline_class = ChatPipeline

    @extend_schema(request=ChatRequestSerializer, **CHAT_SCHEMA)
    def post(self, request: Request) -> HttpResponseBase:
        params = ChatRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        if sse.wants_event_stream(request.headers.get("Accept", "")):
            return self.post_event_stream(request, data)
        pipeline = self.pipeline_class()
        try:
            slot = stream_slots().acquire()
        except MpaiError as exc:
            return error_response(exc)
        metrics.turn_started()
        try:
            with slot:
                result = pipeline.complete(**turn_arguments(request, data))
        except MpaiError as exc:
            if isinstance(exc, RateLimited):
                metrics.rate_limited()
            return error_response(exc)
        finally:
            metrics.turn_ended()
        if result.error is not None:
            return error_response(result.error, message_id=result.partial_message_id)
        return Response(
            {
                "conversation": result.conversation_id,
                "user_message": result.user_message_id,
                "content": result.message.content,
                **completed_fields(result),
            },
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )

    def post_event_stream(self, request: Request, data: dict[str, Any]) -> HttpResponseBase:
        """Start the turn here (a refusal keeps its HTTP status), then stream its events."""
        try:
            slot = stream_slots().acquire()
        except MpaiError as exc:
            return event_stream_error(exc)
        metrics.turn_started()
        try:
            events = self.pipeline_class().stream(**turn_arguments(request, data))
        except BaseException as exc:
            slot.release()
            metrics.turn_ended()
            if not isinstance(exc, MpaiError):
                raise
            if isinstance(exc, RateLimited):
                metrics.rate_limited()
            return event_stream_error(exc)
        asgi = isinstance(request._request, ASGIRequest)
        return sse.event_stream_response(events, slot, asgi=asgi)


def event_stream_error(error: MpaiError) -> HttpResponse:
    """A refusal as one ``chat.error`` event, with the error's HTTP status."""
    return HttpResponse(
        sse.encode_frame(error_frame(error)),
        status=error.status_code,
        content_type=sse.MEDIA_TYPE,
        headers=retry_after_headers(error),
    )
