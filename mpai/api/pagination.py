"""Pagination of mpai's REST API: ``page``/``per_page`` and keyset cursors.

``PagePerPagePagination``: the WordPress REST convention the original used. Response
shape (README, "REST"): ``{"count", "page", "per_page", "results"}``. Both parameters
must be integers ≥ 1 and ``per_page`` ≤ 100; otherwise a 400 in DRF's validation-error
shape naming the parameter. A page past the end is 200 with ``results: []`` (unlike
DRF's ``PageNumberPagination``, which answers 404).

Cursor classes (DRF's ``CursorPagination``, "Pagination" guide): for infinite scroll.
Response shape ``{"next", "previous", "results"}``; ``next``/``previous`` are absolute
URLs carrying an opaque ``cursor`` (``null`` at either end). Each page is one indexed
query ``WHERE <position> < ? ORDER BY <index order> LIMIT page_size + 1`` whose cost
does not grow with depth (no ``OFFSET`` over earlier pages, no ``COUNT``). The
ordering of each class is exactly the order of a model index, ending in the unique
``id``. ``per_page`` (the page size, as in ``page``/``per_page`` mode): integer 1–100
(default 20). Errors: 400 in DRF's validation-error shape, ``{"cursor": ["Invalid
cursor."]}`` for a cursor that was not made by the API (DRF itself answers 404 there)
and ``{"per_page": [...]}``.
"""

from __future__ import annotations

from base64 import b64decode
from typing import Any

from django.db.models import QuerySet
from django.utils.dateparse import parse_datetime
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import BasePagination, Cursor, CursorPagination
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
        # A view may know its total without a COUNT(*) (the chat history: a counter).
        count_rows = getattr(view, "count_rows", None)
        self.count = count_rows(queryset) if count_rows is not None else queryset.count()
        offset = (self.page - 1) * self.per_page
        if offset >= self.count:
            return []
        return list(queryset[offset : offset + self.per_page])

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {"count": self.count, "page": self.page, "per_page": self.per_page, "results": data}
        )

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        return [
            {
                "name": "page",
                "required": False,
                "in": "query",
                "description": "1-based page number (default 1); past the end: empty results.",
                "schema": {"type": "integer", "minimum": 1, "default": 1},
            },
            {
                "name": "per_page",
                "required": False,
                "in": "query",
                "description": "Rows per page (default 10, at most 100).",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            },
        ]

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


class PageSizeSerializer(serializers.Serializer):
    per_page = serializers.IntegerField(min_value=1, max_value=100, required=False)


#: ``?cursor=last``: the last page of the order (e.g. a conversation's newest messages).
LAST_PAGE = "last"


class KeysetCursorPagination(CursorPagination):
    """DRF's ``CursorPagination`` with a validated ``per_page`` and 400 for a bad cursor.

    Subclasses set ``ordering`` to a model index's order; its first field must be a
    ``DateTimeField`` (the cursor's position) and its last the unique ``id``.
    """

    page_size = 20
    page_size_query_param = "per_page"
    max_page_size = 100
    invalid_cursor_message = "Invalid cursor."

    def get_page_size(self, request: Request) -> int:
        params = PageSizeSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        size: int = params.validated_data.get("per_page", self.page_size)
        return size

    def decode_cursor(self, request: Request) -> Cursor | None:
        """Return the request's cursor, ``None`` without one (or an empty ``cursor=``);
        ``cursor=last`` (:data:`LAST_PAGE`) is the last page of the order.

        Raises:
            ValidationError: ``{"cursor": ["Invalid cursor."]}`` (400) for a cursor that
                does not decode or whose position is not a timestamp.
        """
        encoded = request.query_params.get(self.cursor_query_param)
        if not encoded:
            return None
        if encoded == LAST_PAGE:
            # DRF's reversed cursor with no position: the last page, still in order,
            # whose ``previous`` leads back (an infinite scroll upwards starts here).
            return Cursor(offset=0, reverse=True, position=None)
        try:
            # DRF's own decoding skips characters outside base64: be strict first.
            b64decode(encoded.encode("ascii"), validate=True)
            cursor = super().decode_cursor(request)
        except (ValueError, NotFound):
            cursor = None
        if cursor is None or (
            cursor.position is not None and not _is_datetime(str(cursor.position))
        ):
            raise ValidationError({self.cursor_query_param: [self.invalid_cursor_message]})
        return cursor

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        response = super().get_paginated_response_schema(schema)
        response["required"] = ["next", "previous", "results"]
        for link in ("next", "previous"):
            response["properties"][link]["nullable"] = True
        return response


def _is_datetime(value: str) -> bool:
    try:
        return parse_datetime(value) is not None
    except ValueError:
        return False


class ConversationCursorPagination(KeysetCursorPagination):
    """A user's conversations, most recently active first (``mpai_conv_owner_upd_id_idx``)."""

    ordering = ("-updated_at", "-id")


class MessageCursorPagination(KeysetCursorPagination):
    """A conversation's messages in order, oldest first (``mpai_msg_conv_created_idx``)."""

    ordering = ("created_at", "id")


class HistoryCursorPagination(KeysetCursorPagination):
    """A user's messages newest first (``mpai_msg_owner_created_idx``)."""

    ordering = ("-created_at", "-id")


class HistoryPagination(BasePagination):
    """The chat-history endpoint's two modes, chosen per request.

    Without a ``cursor`` query parameter: :class:`PagePerPagePagination`, unchanged.
    With one (``?cursor=`` with an empty value starts at the newest message; then follow
    ``next``): :class:`HistoryCursorPagination`, ``per_page`` 1–100, default 20.
    ``cursor`` together with ``page`` is a 400 naming ``cursor``.
    """

    cursor_query_param = "cursor"

    def __init__(self) -> None:
        self.mode: BasePagination = PagePerPagePagination()

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        if self.cursor_query_param in request.query_params:
            if "page" in request.query_params:
                raise ValidationError(
                    {self.cursor_query_param: ["Use either cursor or page, not both."]}
                )
            self.mode = HistoryCursorPagination()
        return self.mode.paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data: Any) -> Response:
        return self.mode.get_paginated_response(data)

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        page = PagePerPagePagination().get_schema_operation_parameters(view)
        cursor = HistoryCursorPagination().get_schema_operation_parameters(view)
        cursor = [p for p in cursor if p["name"] == self.cursor_query_param]
        for parameter in cursor:
            parameter["description"] = (
                "Cursor mode: present (empty to start at the newest message) switches "
                "to keyset pagination (then per_page defaults to 20); pass the cursor "
                "of `next` or `previous`."
            )
        return page + cursor

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "oneOf": [
                PagePerPagePagination().get_paginated_response_schema(schema),
                HistoryCursorPagination().get_paginated_response_schema(schema),
            ]
        }
