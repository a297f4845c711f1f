"""The conversations REST API: list, create, read, rename, delete, and their messages.

All under ``/api/mpai/v1/`` (URL names in the ``mpai_api`` namespace):

- ``conversations/`` (``conversations``): ``GET`` the signed-in user's conversations,
  most recently active first (``updated_at``, then ``id``, descending), cursor-paginated
  ``{"next", "previous", "results": [conversation]}`` (:mod:`mpai.api.pagination`);
  ``POST {"title"?}`` creates one: 201 with the conversation.
- ``conversations/<id>/`` (``conversation``): ``GET`` one; ``PATCH {"title"}`` renames
  it (200 with the conversation); ``DELETE`` removes it with its messages (204).
- ``conversations/<id>/messages/`` (``conversation-messages``): ``GET`` its messages in
  order (``created_at``, then ``id``, ascending), cursor-paginated.

Conversation: ``{"id", "title", "created_at", "updated_at"}``; message: ``{"id",
"conversation", "role", "status", "content", "created_at", "model", "finish_reason"}``
(:mod:`mpai.api.serializers`).

Errors: 400 in DRF's validation-error shape (a bad ``title``, ``cursor`` or
``per_page``); 401 when signed out (with ``WWW-Authenticate`` when an authenticator
offers one, else 403, :mod:`mpai.api.auth`); 404 ``{"detail"}`` for a conversation that
does not exist or belongs to someone else (the two are indistinguishable); 405 for
``PUT``.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, permissions
from rest_framework.serializers import BaseSerializer

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.pagination import ConversationCursorPagination, MessageCursorPagination
from mpai.api.serializers import ConversationMessageSerializer, ConversationSerializer
from mpai.chat import history_cache
from mpai.models import Conversation, Feedback, Message

NOT_FOUND = OpenApiResponse(description="No such conversation of the signed-in user.")


def own_conversations(user: Any) -> QuerySet[Conversation]:
    """``user``'s conversations, most recently active first (``mpai_conv_owner_upd_id_idx``)."""
    return Conversation.objects.filter(owner=user).order_by("-updated_at", "-id")


@extend_schema_view(
    get=extend_schema(summary="List the signed-in user's conversations, most recent first"),
    post=extend_schema(summary="Start a conversation", responses={201: ConversationSerializer}),
)
class ConversationListView(AuthenticateHeaderMixin, generics.ListCreateAPIView):
    """``GET``/``POST /api/mpai/v1/conversations/`` (see the module docstring)."""

    schema = AutoSchema()
    serializer_class = ConversationSerializer
    pagination_class = ConversationCursorPagination
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self) -> QuerySet[Conversation]:
        return own_conversations(self.request.user)

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        serializer.save(owner=self.request.user)


@extend_schema_view(
    get=extend_schema(
        summary="Read a conversation", responses={200: ConversationSerializer, 404: NOT_FOUND}
    ),
    patch=extend_schema(
        summary="Rename a conversation",
        responses={200: ConversationSerializer, 404: NOT_FOUND},
    ),
    delete=extend_schema(
        summary="Delete a conversation and its messages",
        responses={204: OpenApiResponse(description="Deleted."), 404: NOT_FOUND},
    ),
)
class ConversationDetailView(AuthenticateHeaderMixin, generics.RetrieveUpdateDestroyAPIView):
    """``GET``/``PATCH``/``DELETE /api/mpai/v1/conversations/<id>/`` (module docstring)."""

    schema = AutoSchema()
    serializer_class = ConversationSerializer
    permission_classes = [permissions.IsAuthenticated]
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Conversation]:
        return own_conversations(self.request.user)

    def perform_destroy(self, instance: Conversation) -> None:
        gone = Conversation(pk=instance.pk)  # ``delete()`` clears ``instance.pk``
        with transaction.atomic():
            instance.delete()  # its messages go with it (on_delete=CASCADE)
            transaction.on_commit(lambda: history_cache.delete_cached_history(gone))


@extend_schema_view(
    get=extend_schema(
        summary="List a conversation's messages in order",
        responses={200: ConversationMessageSerializer(many=True), 404: NOT_FOUND},
    )
)
class ConversationMessagesView(AuthenticateHeaderMixin, generics.ListAPIView):
    """``GET /api/mpai/v1/conversations/<id>/messages/`` (see the module docstring)."""

    schema = AutoSchema()
    serializer_class = ConversationMessageSerializer
    pagination_class = MessageCursorPagination
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self) -> QuerySet[Message]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request user
            return Message.objects.none()
        conversation = get_object_or_404(own_conversations(self.request.user), pk=self.kwargs["pk"])
        user: Any = self.request.user
        own = Prefetch("feedback", Feedback.objects.filter(user=user), to_attr="own_feedback")
        return (
            Message.objects.filter(conversation=conversation)
            .prefetch_related(own)
            .order_by("created_at", "id")
        )
