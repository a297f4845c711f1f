"""mpai's HTTP URLs. Include them at the project root: ``path("", include("mpai.urls"))``.

- ``api/mpai/v1/chat-history/``: the chat-history REST API.
- ``mpai/chat/``: the chat page (sign-in required).
- ``metrics``: the Prometheus exposition (staff or ``MPAI["METRICS_TOKEN"]``);
  ``/metrics`` when included at the root.
"""

from django.urls import include, path

from mpai import views
from mpai.metrics.views import metrics_view

app_name = "mpai"

urlpatterns = [
    path("api/mpai/", include("mpai.api.urls")),
    path("mpai/chat/", views.chat_page, name="chat"),
    path("metrics", metrics_view, name="metrics"),
]
