"""Serializers of mpai's REST API (shapes: README, "REST")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from mpai.models import Conversation, Message


class ChatHistoryMessageSerializer(serializers.ModelSerializer):
    """One chat-history row (README, "REST")."""

    conversation = serializers.IntegerField(source="conversation_id", read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "role",
            "content",
            "status",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "created_at",
        ]
        read_only_fields = fields


#: The ``Message`` columns of a chat-history row, for ``.values()``: the serializer's
#: fields, ``conversation`` read as ``conversation_id``.
HISTORY_ROW_VALUES = tuple(
    "conversation_id" if name == "conversation" else name
    for name in ChatHistoryMessageSerializer.Meta.fields
)
#: DRF's own field for ``created_at``: ``REST_FRAMEWORK["DATETIME_FORMAT"]`` (ISO 8601,
#: ``Z`` for UTC by default) in the active time zone, read at each call.
_CREATED_AT = serializers.DateTimeField(read_only=True)


def chat_history_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat-history rows from ``Message`` ``.values(*HISTORY_ROW_VALUES)`` dicts, equal
    to what :class:`ChatHistoryMessageSerializer` gives for the same messages (same
    keys in the same order, ``created_at`` formatted by DRF's ``DateTimeField``), so the
    JSON is byte-for-byte the same, without a serializer per request and per row.

    Returns:
        ``[{"id", "conversation", "role", "content", "status", "model",
        "prompt_tokens", "completion_tokens", "created_at"}]``; the token counts may be
        None. Raises ``KeyError`` for a dict missing one of the columns.
    """
    created_at = _CREATED_AT.to_representation
    return [
        {
            "id": row["id"],
            "conversation": row["conversation_id"],
            "role": row["role"],
            "content": row["content"],
            "status": row["status"],
            "model": row["model"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "created_at": created_at(row["created_at"]),
        }
        for row in rows
    ]


class ConversationSerializer(serializers.ModelSerializer):
    """A conversation: ``{"id", "title", "created_at", "updated_at"}``.

    ``title``: 1–200 characters once stripped of surrounding whitespace; optional on
    create (``""``: untitled), required on rename (``PATCH``). Timestamps are ISO 8601
    in UTC; ``updated_at`` moves with each new message and each rename.
    Errors: DRF's validation-error shape, e.g. ``{"title": ["This field may not be blank."]}``.
    """

    title = serializers.CharField(max_length=200, required=False, trim_whitespace=True)

    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.partial and "title" not in attrs:
            raise serializers.ValidationError({"title": ["This field is required."]})
        return attrs


class ConversationMessageSerializer(serializers.ModelSerializer):
    """One message of a conversation (field names as in :class:`ChatHistoryMessageSerializer`).

    ``{"id", "conversation", "role", "status", "content", "created_at", "model",
    "finish_reason", "feedback"}``; ``feedback``: the requesting user's own rating of an
    assistant reply, ``{"rating": "up" | "down", "comment"}``, or ``null``; ``role``:
    ``user`` or ``assistant``; ``status``: ``complete``, ``error``, ``cancelled`` or
    ``streaming``; ``model`` and ``finish_reason`` are ``""``
    on user messages.
    """

    conversation = serializers.IntegerField(source="conversation_id", read_only=True)
    feedback = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation",
            "role",
            "status",
            "content",
            "created_at",
            "model",
            "finish_reason",
            "feedback",
        ]
        read_only_fields = fields

    @extend_schema_field(
        inline_serializer(
            "OwnFeedback",
            {"rating": serializers.CharField(), "comment": serializers.CharField()},
            allow_null=True,
        )
    )
    def get_feedback(self, obj: Message) -> dict[str, str] | None:
        """The requesting user's rating of this reply, ``{"rating", "comment"}``, or
        ``None``; read from ``obj.own_feedback`` (a ``Prefetch`` of the view)."""
        own = getattr(obj, "own_feedback", None) or []
        return {"rating": own[0].rating, "comment": own[0].comment} if own else None


class ChatUsageSerializer(serializers.Serializer):
    """Token counts of a reply (the provider's, or the cached reply's)."""

    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatReplySerializer(serializers.Serializer):
    """The answer of ``POST /api/mpai/v1/chat/`` (201; 200 for a replay). Schema only."""

    conversation = serializers.IntegerField()
    user_message = serializers.IntegerField()
    message = serializers.IntegerField()
    content = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    finish_reason = serializers.CharField(allow_blank=True, allow_null=True)
    cached = serializers.BooleanField()
    replayed = serializers.BooleanField()
    usage = ChatUsageSerializer(allow_null=True)
    timings_ms = serializers.DictField(
        child=serializers.FloatField(allow_null=True), help_text="Milliseconds per stage."
    )
    refusal = serializers.BooleanField(required=False)


class ChatErrorSerializer(serializers.Serializer):
    """An mpai error: ``{"code", "detail", "retry_after"?, "message"?}``. Schema only.

    ``retry_after``: seconds (also sent rounded up as ``Retry-After``); ``message``: the
    id of a partial reply that was saved.
    """

    code = serializers.CharField()
    detail = serializers.CharField()
    retry_after = serializers.FloatField(required=False)
    message = serializers.IntegerField(required=False)
