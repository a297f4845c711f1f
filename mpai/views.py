from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def chat_page(request: HttpRequest) -> HttpResponse:
    """The chat page: a websocket client of ``ws/mpai/chat/`` with the user's history."""
    return render(request, "mpai/chat.html")
