from django.urls import path

from mpai.api.chat import ChatView
from mpai.api.conversations import (
    ConversationDetailView,
    ConversationListView,
    ConversationMessagesView,
)
from mpai.api.export import EraseView, ExportView
from mpai.api.feedback import MessageFeedbackView
from mpai.api.schema import DOCS_ROUTE, SCHEMA_ROUTE, MpaiDocsView, MpaiSchemaView
from mpai.api.search import SearchView
from mpai.api.views import ChatHistoryView
from mpai.health.endpoints import LivenessView, ReadinessView
from mpai.usage.api import UsageView

app_name = "mpai_api"

urlpatterns = [
    path("v1/chat-history/", ChatHistoryView.as_view(), name="chat-history"),
    path("v1/chat/", ChatView.as_view(), name="chat"),
    path("v1/conversations/", ConversationListView.as_view(), name="conversations"),
    path("v1/conversations/<int:pk>/", ConversationDetailView.as_view(), name="conversation"),
    path(
        "v1/conversations/<int:pk>/messages/",
        ConversationMessagesView.as_view(),
        name="conversation-messages",
    ),
    path("v1/search/", SearchView.as_view(), name="search"),
    path("v1/usage/", UsageView.as_view(), name="usage"),
    path("v1/export/", ExportView.as_view(), name="export"),
    path("v1/history/erase/", EraseView.as_view(), name="erase"),
    path(
        "v1/messages/<int:message_id>/feedback/",
        MessageFeedbackView.as_view(),
        name="message-feedback",
    ),
    path(SCHEMA_ROUTE, MpaiSchemaView.as_view(), name="schema"),
    path(DOCS_ROUTE, MpaiDocsView.as_view(), name="docs"),
    path("v1/health/live/", LivenessView.as_view(), name="health-live"),
    path("v1/health/ready/", ReadinessView.as_view(), name="health-ready"),
]
