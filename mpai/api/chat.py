"""``POST /api/mpai/v1/chat/``: one chat turn over HTTP, answered when the reply is saved.

The same pipeline as the websocket; for clients that cannot keep a websocket open.
Errors use the websocket's codes: ``{"code", "detail", "retry_after"?, "message"?}``
with 400 (invalid_message, message_too_long), 404 (conversation_not_found), 429 with a
``Retry-After`` header (rate_limited), 502 (provider errors), 504 (provider_timeout).
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.parsers import BoundedJSONParser
from mpai.chat.pipeline import ChatPipeline, TurnResult
from mpai.exceptions import ConversationNotFound, MpaiError, ProviderTimeout, RateLimited

STATUS_BY_CODE = {
    "invalid_message": status.HTTP_400_BAD_REQUEST,
    "message_too_long": status.HTTP_400_BAD_REQUEST,
    ConversationNotFound.code: status.HTTP_404_NOT_FOUND,
    RateLimited.code: status.HTTP_429_TOO_MANY_REQUESTS,
    ProviderTimeout.code: status.HTTP_504_GATEWAY_TIMEOUT,
    "internal_error": status.HTTP_500_INTERNAL_SERVER_ERROR,
}


class ChatRequestSerializer(serializers.Serializer):
    conversation = serializers.IntegerField(required=False, allow_null=True, default=None)
    content = serializers.CharField(trim_whitespace=False, allow_blank=True)
    client_id = serializers.CharField(required=False, allow_null=True, default=None)
    page = serializers.DictField(required=False, allow_null=True, default=None)
    cache = serializers.BooleanField(required=False, default=True)


def error_response(error: MpaiError, *, message_id: int | None = None) -> Response:
    """Return the HTTP response for ``error`` (status by code; provider errors 502)."""
    body: dict[str, Any] = {"code": error.code, "detail": error.detail}
    headers = {}
    if error.retry_after is not None:
        body["retry_after"] = error.retry_after
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if message_id is not None:
        body["message"] = message_id
    code = STATUS_BY_CODE.get(error.code, status.HTTP_502_BAD_GATEWAY)
    return Response(body, status=code, headers=headers)


class ChatView(AuthenticateHeaderMixin, APIView):
    """Send a message and get the whole reply (see the module docstring)."""

    permission_classes = [permissions.IsAuthenticated]
    # JSON only, within MAX_FRAME_BYTES and MAX_JSON_DEPTH (mpai.api.parsers).
    parser_classes = [BoundedJSONParser]
    pipeline_class = ChatPipeline

    def post(self, request: Request) -> Response:
        params = ChatRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        pipeline = self.pipeline_class()
        try:
            turn = pipeline.start(
                user=request.user,
                content=data["content"],
                conversation_id=data["conversation"],
                client_id=data["client_id"],
                page=data["page"],
                use_cache=data["cache"],
            )
        except MpaiError as exc:
            return error_response(exc)
        result: TurnResult = pipeline.run(turn, on_delta=lambda text: None)
        if result.error is not None:
            return error_response(result.error, message_id=result.partial_message_id)
        return Response(
            {
                "conversation": turn.conversation.pk,
                "user_message": turn.user_message.pk,
                "content": result.message.content,
                **result.summary(),
            },
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )
