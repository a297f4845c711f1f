from django.urls import path

from mpai.api.chat import ChatView
from mpai.api.views import ChatHistoryView

app_name = "mpai_api"

urlpatterns = [
    path("v1/chat-history/", ChatHistoryView.as_view(), name="chat-history"),
    path("v1/chat/", ChatView.as_view(), name="chat"),
]
