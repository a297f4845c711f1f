from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import generics, permissions

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.pagination import PagePerPagePagination
from mpai.api.serializers import ChatHistoryMessageSerializer
from mpai.chat.history import message_history


class ChatHistoryView(AuthenticateHeaderMixin, generics.ListAPIView):
    """``GET /api/mpai/v1/chat-history/?page=N&per_page=M``: the user's messages, newest first.

    Authentication: the project's DRF authentication classes (session and token in
    the demo). Errors: 400 for a bad ``page`` or ``per_page``; 401 when signed out (with
    ``WWW-Authenticate`` when an authenticator offers one, e.g. ``Token``; else 403).
    """

    serializer_class = ChatHistoryMessageSerializer
    pagination_class = PagePerPagePagination
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self) -> QuerySet[Any]:
        return message_history(user=self.request.user)
