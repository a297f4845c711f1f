"""``/api/mpai/v1/messages/<id>/feedback/``: the signed-in user's feedback on one of
their assistant messages (:mod:`mpai.feedback`).

- ``PUT`` with a JSON body ``{"rating": "up" | "down", "comment"?: "..."}`` (``comment``
  at most 2,000 characters; left out means none, since PUT replaces the whole
  feedback): 200, whether it was created or replaced.
- ``GET``: 200 with the feedback, 404 when there is none.
- ``DELETE``: 204; 404 when there is none.

Body of 200::

    {"message": 7, "rating": "up", "comment": "", "created_at": "...", "updated_at": "..."}

Errors: 404 ``{"detail": "No assistant message with this id."}`` for an unknown id,
another user's message, or a **user** message (only assistant replies are rated; a
foreign id looks exactly like an unknown one); 404 ``{"detail": "No feedback on this
message."}``; 400 in DRF's validation-error shape for a bad body (``{"rating": ["\"x\"
is not a valid choice."]}``, ``{"comment": ["Ensure this field has no more than 2000
characters."]}``); 415 for a body that is not JSON; 401 when signed out.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.parsers import BoundedJSONParser
from mpai.feedback import (
    MAX_COMMENT_CHARS,
    FeedbackNotFound,
    MessageNotFound,
    delete_feedback,
    get_feedback,
    set_feedback,
)
from mpai.models import Feedback

MESSAGE_NOT_FOUND = "No assistant message with this id."
FEEDBACK_NOT_FOUND = "No feedback on this message."


class FeedbackRequestSerializer(serializers.Serializer):
    rating = serializers.ChoiceField(choices=Feedback.Rating.choices)
    comment = serializers.CharField(
        max_length=MAX_COMMENT_CHARS, allow_blank=True, required=False, default=""
    )


class FeedbackSerializer(serializers.ModelSerializer):
    """The feedback as the API shows it."""

    message = serializers.IntegerField(source="message_id", read_only=True)

    class Meta:
        model = Feedback
        fields = ["message", "rating", "comment", "created_at", "updated_at"]
        read_only_fields = fields


_not_found = OpenApiResponse(description="Unknown, foreign or user message; or no feedback.")


class MessageFeedbackView(AuthenticateHeaderMixin, APIView):
    """PUT/GET/DELETE of the user's feedback on an assistant message (module docstring)."""

    schema = AutoSchema()
    permission_classes = [permissions.IsAuthenticated]
    parser_classes = [BoundedJSONParser]

    @extend_schema(
        summary="Rate one of your assistant messages (create or replace)",
        request=FeedbackRequestSerializer,
        responses={200: FeedbackSerializer, 404: _not_found},
    )
    def put(self, request: Request, message_id: int) -> Response:
        params = FeedbackRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            feedback, _created = set_feedback(
                request.user,
                message_id,
                params.validated_data["rating"],
                params.validated_data["comment"],
            )
        except MessageNotFound:
            raise NotFound(MESSAGE_NOT_FOUND) from None
        return Response(FeedbackSerializer(feedback).data)

    @extend_schema(
        summary="Your feedback on one of your assistant messages",
        responses={200: FeedbackSerializer, 404: _not_found},
    )
    def get(self, request: Request, message_id: int) -> Response:
        return Response(FeedbackSerializer(self._call(get_feedback, request, message_id)).data)

    @extend_schema(
        summary="Withdraw your feedback on one of your assistant messages",
        responses={204: None, 404: _not_found},
    )
    def delete(self, request: Request, message_id: int) -> Response:
        self._call(delete_feedback, request, message_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @staticmethod
    def _call(function: Any, request: Request, message_id: int) -> Any:
        try:
            return function(request.user, message_id)
        except MessageNotFound:
            raise NotFound(MESSAGE_NOT_FOUND) from None
        except FeedbackNotFound:
            raise NotFound(FEEDBACK_NOT_FOUND) from None
