from rest_framework import serializers

from mpai.models import Message


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
