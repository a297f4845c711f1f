"""``GET /api/mpai/v1/search/?q=...``: search the signed-in user's own chat history.

Query parameters: ``q`` (required, 1–200 characters after trimming whitespace),
``cursor`` (from ``next``/``previous``), ``per_page`` (1–100, default 20).

Response (200)::

    {"q": "machine learning",
     "conversations": [{"id": 3, "title": "Intro to ML", "updated_at": "...",
                        "excerpt": "Intro to «ML»"}],
     "next": "https://…/api/mpai/v1/search/?cursor=…&q=…" | null,
     "previous": … | null,
     "results": [{"message": 7, "conversation": 3, "conversation_title": "Intro to ML",
                  "role": "assistant", "created_at": "2026-11-23T13:20:01.123456Z",
                  "excerpt": "… supervised «machine» «learning» is …"}]}

``results``: matching messages (both roles), newest first, keyset-paged on
(``created_at``, ``id``) (:class:`mpai.api.pagination.HistoryCursorPagination`, DRF's
``CursorPagination``): every page is one indexed query, whatever its depth; results
are not ranked by relevance. ``conversations``: up to 10 conversations whose **title**
matches, most recently active first, on the first page only (``[]`` on a page reached
through a cursor). Matching and the plain-text ``«…»`` excerpt markers:
:mod:`mpai.chat.search`.

Errors: 400 in DRF's validation-error shape naming the parameter (``{"q": ["This field
is required."]}``, ``["This field may not be blank."]``, ``["Ensure this field has no
more than 200 characters."]``, ``{"cursor": ["Invalid cursor."]}``, ``{"per_page":
[...]}``); 401 when signed out (``WWW-Authenticate: Token`` with token authentication).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.pagination import HistoryCursorPagination
from mpai.chat.search import (
    MAX_QUERY_CHARS,
    bounded_search,
    message_excerpt,
    search_conversations,
    search_messages,
    search_terms,
)
from mpai.models import Conversation, Message


class SearchParamsSerializer(serializers.Serializer):
    q = serializers.CharField(min_length=1, max_length=MAX_QUERY_CHARS)


class SearchResultSerializer(serializers.ModelSerializer):
    """One matching message; the serializer context carries ``terms`` (the query's
    words, :func:`mpai.chat.search.search_terms`)."""

    message = serializers.IntegerField(source="id", read_only=True)
    conversation = serializers.IntegerField(source="conversation_id", read_only=True)
    conversation_title = serializers.CharField(source="conversation.title", read_only=True)
    excerpt = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = ["message", "conversation", "conversation_title", "role", "created_at", "excerpt"]
        read_only_fields = fields

    def get_excerpt(self, obj: Message) -> str:
        return message_excerpt(obj, self.context.get("terms", []))


class ConversationMatchSerializer(serializers.ModelSerializer):
    """One conversation whose title matches; ``excerpt`` is the title with ``«…»``."""

    excerpt = serializers.CharField(read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "title", "updated_at", "excerpt"]
        read_only_fields = fields


class SearchPagination(HistoryCursorPagination):
    """Newest first on (``created_at``, ``id``), the order of ``mpai_msg_owner_created_idx``."""


@extend_schema(
    summary="Search the signed-in user's messages and conversation titles",
    parameters=[
        OpenApiParameter(
            "q", str, required=True, description="1–200 characters; every word must match."
        )
    ],
    responses=inline_serializer(
        "SearchResponse",
        {
            "q": serializers.CharField(),
            "conversations": ConversationMatchSerializer(many=True),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": SearchResultSerializer(many=True),
        },
    ),
)
class SearchView(AuthenticateHeaderMixin, generics.GenericAPIView):
    """The search endpoint (see the module docstring for parameters, shape, errors)."""

    schema = AutoSchema()
    permission_classes = [permissions.IsAuthenticated]
    serializer_class = SearchResultSerializer
    pagination_class = SearchPagination

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        params = SearchParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        q: str = params.validated_data["q"]
        terms = search_terms(q)
        page = bounded_search(
            request.user, lambda: self.paginate_queryset(search_messages(request.user, q))
        )
        results = SearchResultSerializer(page, many=True, context={"terms": terms}).data
        response = self.get_paginated_response(results)
        first_page = not request.query_params.get(SearchPagination.cursor_query_param)
        conversations = search_conversations(request.user, q) if first_page else []
        response.data = {
            "q": q,
            "conversations": ConversationMatchSerializer(conversations, many=True).data,
            **response.data,
        }
        return response
