"""The user's own history: download it, or erase it.

``GET /api/mpai/v1/export/`` (name ``export``): the signed-in user's messages as JSON
Lines (``Content-Type: application/x-ndjson; charset=utf-8``), one message per line,
oldest first, shaped as :mod:`mpai.chat.export` says, streamed page by page (never built
in memory), with ``Content-Disposition: attachment; filename="mpai-history-<UTC date>
.jsonl"``. Being signed in is the confirmation a download needs.

``POST /api/mpai/v1/history/erase/`` (name ``erase``): delete all of the signed-in
user's conversations and messages and their cached context (:mod:`mpai.chat.erase`).
The JSON body must be ``{"confirm": true}`` (the JSON boolean: ``"true"``, ``1`` or an
empty body do not do), so no client erases by accident; the session or token is the
proof of who asks. Answers 204 with no body once everything is deleted.

Errors: 400 ``{"code": "confirmation_required", "detail": str}`` when ``confirm`` is
missing or not ``true``; 400 ``invalid_json`` for a body that is not JSON; 401 when signed
out (with ``WWW-Authenticate`` when an authenticator offers one, e.g. ``Token``; else
403); 405 for other methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django.utils import timezone
from rest_framework import permissions, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.api.parsers import BoundedJSONParser
from mpai.chat import export
from mpai.chat.erase import ERASE_CONFIRMATION, erase_user_history


class JSONLinesRenderer(BaseRenderer):
    """Lets content negotiation accept ``application/x-ndjson``; what it renders itself
    (an error before the stream: not signed in) is one JSON line."""

    media_type = export.MEDIA_TYPE
    format = "jsonl"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        return JSONRenderer().render(data) + b"\n"


class ExportView(AuthenticateHeaderMixin, APIView):
    """Download the user's history as JSON Lines (see the module docstring)."""

    permission_classes = [permissions.IsAuthenticated]
    renderer_classes = [JSONLinesRenderer, JSONRenderer]

    def get(self, request: Request) -> StreamingHttpResponse:
        user = request.user
        content: Any
        if isinstance(request._request, ASGIRequest):
            content = export.aiter_export_lines(user)
        else:
            content = export.iter_export_lines(user)
        response = StreamingHttpResponse(
            content, content_type=f"{export.MEDIA_TYPE}; charset=utf-8"
        )
        filename = f"mpai-history-{timezone.now():%Y-%m-%d}.jsonl"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response


class EraseView(AuthenticateHeaderMixin, APIView):
    """Erase the user's history, confirmed by a fixed phrase (see the module docstring)."""

    permission_classes = [permissions.IsAuthenticated]
    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer]

    def post(self, request: Request) -> Response:
        data = request.data
        confirm = data.get("confirm") if isinstance(data, dict) else None
        if confirm is not ERASE_CONFIRMATION:
            return Response(
                {
                    "code": "confirmation_required",
                    "detail": 'Send {"confirm": true} to erase your history.',
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        erase_user_history(request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
