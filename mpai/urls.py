"""mpai's HTTP URLs. Include them at the project root: ``path("", include("mpai.urls"))``.

- ``api/mpai/v1/chat-history/``: the chat-history REST API.
- ``mpai/chat/``: the chat page (sign-in required).
"""

from django.urls import include, path

from mpai import views

app_name = "mpai"

urlpatterns = [
    path("api/mpai/", include("mpai.api.urls")),
    path("mpai/chat/", views.chat_page, name="chat"),
]
