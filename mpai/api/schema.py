"""The OpenAPI 3 schema of mpai's REST API, by drf-spectacular.

``GET /api/mpai/v1/schema/`` (URL name ``schema`` in the ``mpai_api`` namespace): the
schema of mpai's endpoints only (those of :mod:`mpai.api.urls`, with their paths as
mounted on the site), YAML (``application/vnd.oai.openapi``) by default, JSON
(``application/vnd.oai.openapi+json``) with ``?format=json`` or an ``Accept`` header
asking for it. Its title is "mpai REST API", version ``1``; who may read it comes
from the site's ``SPECTACULAR_SETTINGS`` (drf-spectacular's "Settings":
``SERVE_PERMISSIONS``, default anyone).

mpai's views set drf-spectacular's ``AutoSchema`` themselves, so this works whatever
the site's ``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``; a site that wants mpai's
endpoints in its own site-wide schema sets that to
``"drf_spectacular.openapi.AutoSchema"`` (drf-spectacular's "Installation"). DRF's
built-in schema generation is deprecated in favour of such packages (DRF's "Schemas").
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponseBase
from django.urls import include, path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.request import Request

from mpai.api.serializers import ChatErrorSerializer, ChatReplySerializer

#: The tails of the schema's and the docs page's routes in :mod:`mpai.api.urls`.
SCHEMA_ROUTE = "v1/schema/"
DOCS_ROUTE = "v1/docs/"

_chat_error = OpenApiResponse(ChatErrorSerializer, description="An mpai error (`code`).")

#: ``extend_schema`` keyword arguments of ``POST /api/mpai/v1/chat/`` (an ``APIView``).
CHAT_SCHEMA: dict[str, Any] = {
    "summary": "One chat turn: send a message, get the saved reply",
    "responses": {
        (201, "application/json"): OpenApiResponse(ChatReplySerializer, description="Reply."),
        (200, "application/json"): OpenApiResponse(
            ChatReplySerializer, description="A replay of the turn with this `client_id`."
        ),
        (200, "text/event-stream"): OpenApiResponse(
            OpenApiTypes.STR,
            description="With `Accept: text/event-stream`: the turn's frames as "
            "Server-Sent Events.",
        ),
        (400, "application/json"): _chat_error,
        (404, "application/json"): _chat_error,
        (413, "application/json"): _chat_error,
        (429, "application/json"): _chat_error,
        (502, "application/json"): _chat_error,
        (503, "application/json"): _chat_error,
        (504, "application/json"): _chat_error,
    },
}


class MpaiSchemaGenerator(SchemaGenerator):
    """drf-spectacular's generator, giving its ``AutoSchema`` to any view without one
    (a site whose ``DEFAULT_SCHEMA_CLASS`` is another)."""

    def create_view(self, callback: Any, method: str, request: Any = None) -> Any:
        view = super().create_view(callback, method, request)
        if not isinstance(view.schema, AutoSchema):
            self._set_schema_to_view(view, AutoSchema())
        return view


@extend_schema(exclude=True)
class MpaiSchemaView(SpectacularAPIView):
    """The OpenAPI 3 document of mpai's API (see the module docstring).

    Errors: those of the site's ``SERVE_PERMISSIONS`` (403 for a reader it refuses).
    """

    generator_class = MpaiSchemaGenerator
    custom_settings = {"TITLE": "mpai REST API", "VERSION": "1"}

    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        from mpai.api import urls as api_urls

        mount = request.path_info.removesuffix(SCHEMA_ROUTE).lstrip("/")
        self.patterns = [path(mount, include((api_urls.urlpatterns, api_urls.app_name)))]
        return super().get(request, *args, **kwargs)


@extend_schema(exclude=True)
class MpaiDocsView(SpectacularSwaggerSplitView):
    """``GET /api/mpai/v1/docs/``: Swagger UI over :class:`MpaiSchemaView`'s schema.

    Nothing is loaded from the internet: Swagger UI's files come from the
    ``drf-spectacular-sidecar`` package, which must be in the site's ``INSTALLED_APPS``
    (``"drf_spectacular_sidecar"``) for its static files to be found. The page has no
    inline script or style (its init script is this view with ``?script``), so it works
    under a ``script-src 'self'; style-src 'self'`` Content-Security-Policy. Readers: as
    the schema (``SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"]``).
    """

    template_name = "mpai/api/docs.html"
    title = "mpai REST API"

    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # The schema sits beside this page, wherever the site mounted mpai's API.
        self.url = request.path.removesuffix(DOCS_ROUTE) + SCHEMA_ROUTE
        return super().get(request, *args, **kwargs)

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        from django.templatetags.static import static

        return static(f"drf_spectacular_sidecar/swagger-ui-dist/{filename}")

    @staticmethod
    def _swagger_ui_favicon() -> str:
        from django.templatetags.static import static

        return static("drf_spectacular_sidecar/swagger-ui-dist/favicon-32x32.png")
