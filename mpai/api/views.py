from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions
from rest_framework.request import Request
from rest_framework.response import Response

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.pagination import HistoryPagination
from mpai.api.serializers import (
    HISTORY_ROW_VALUES,
    ChatHistoryMessageSerializer,
    chat_history_rows,
)
from mpai.chat.history import history_count, message_history

#: The columns of a chat-history row (an older name of ``HISTORY_ROW_VALUES``).
HISTORY_ROW_COLUMNS = HISTORY_ROW_VALUES


@extend_schema(summary="The signed-in user's messages, newest first")
class ChatHistoryView(AuthenticateHeaderMixin, generics.ListAPIView):
    """``GET /api/mpai/v1/chat-history/?page=N&per_page=M``: the user's messages, newest first.

    Two pagination modes (:class:`mpai.api.pagination.HistoryPagination`):

    - ``page``/``per_page`` (without ``cursor``): ``{"count", "page", "per_page",
      "results"}``, as ever.
    - cursor mode, switched on by the ``cursor`` parameter (``?cursor=`` with an empty
      value for the first page, optionally ``&per_page=1..100``, default 20):
      ``{"next", "previous", "results"}``; follow ``next`` (an absolute URL, ``null``
      after the oldest message). Each page costs one indexed query whatever its depth.

    Authentication: the project's DRF authentication classes (session and token in
    the demo). Errors: 400 for a bad ``page``, ``per_page`` or
    ``cursor`` (``{"cursor": ["Invalid cursor."]}``) and for ``cursor`` together with
    ``page``; 401 when signed out (with ``WWW-Authenticate`` when an
    authenticator offers one, e.g. ``Token``; else 403).
    """

    schema = AutoSchema()
    serializer_class = ChatHistoryMessageSerializer
    pagination_class = HistoryPagination
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self) -> QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request user
            return message_history(user=None).none()
        # Only the row's columns, as dicts: not the content-sized ones the API never
        # shows (``tool_calls`` JSON, heartbeats, error details), and no model instances.
        return message_history(user=self.request.user).values(*HISTORY_ROW_VALUES)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The page's rows by :func:`~mpai.api.serializers.chat_history_rows`, equal to
        ``serializer_class``'s (still the documented response) at a fraction of its cost."""
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        if page is None:  # no pagination class: never with this view's
            return Response(chat_history_rows(queryset))
        return self.get_paginated_response(chat_history_rows(page))

    def count_rows(self, queryset: QuerySet[Any]) -> int:
        """The ``count`` of page/per_page mode: the user's counter, not a COUNT(*)
        (:func:`mpai.chat.history.history_count`)."""
        return history_count(user=self.request.user)
