"""``page``/``per_page`` pagination, the WordPress REST convention the original used.

Response shape (README, "REST"): ``{"count", "page", "per_page", "results"}``. Both
parameters must be integers ≥ 1 and ``per_page`` ≤ 100; otherwise a 400 in DRF's
validation-error shape naming the parameter. A page past the end is 200 with
``results: []`` (unlike DRF's ``PageNumberPagination``, which answers 404).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class PageParamsSerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, default=1)
    per_page = serializers.IntegerField(min_value=1, max_value=100, default=10)


class PagePerPagePagination(BasePagination):
    """Offset pagination by ``page`` (1-based) and ``per_page`` (default 10, max 100)."""

    default_per_page = 10
    max_per_page = 100

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any]:
        params = PageParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        self.page: int = params.validated_data["page"]
        self.per_page: int = params.validated_data["per_page"]
        self.count = queryset.count()
        offset = (self.page - 1) * self.per_page
        if offset >= self.count:
            return []
        return list(queryset[offset : offset + self.per_page])

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {"count": self.count, "page": self.page, "per_page": self.per_page, "results": data}
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["count", "page", "per_page", "results"],
            "properties": {
                "count": {"type": "integer"},
                "page": {"type": "integer"},
                "per_page": {"type": "integer"},
                "results": schema,
            },
        }
