"""Websocket URL patterns; a project wraps them in AllowedHostsOriginValidator and auth."""

from django.urls import path

from mpai.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/mpai/chat/", ChatConsumer.as_asgi()),
]
