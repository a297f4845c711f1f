"""Admin pages for conversations and messages (view and delete, never edit or add) and
the system-health dashboard.

Chat history is a record of what was said: a message or conversation changed or added
by hand would be presented as if the user or the model had said it (and fed back to
the model as context). So the admin shows both read-only; staff with the delete
permission can still delete them (README, "Security defaults of the demo").
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from .admin_pages import SinglePageAdmin
from .health.models import Health
from .models import Conversation, Message


class ReadOnlyHistoryAdmin(admin.ModelAdmin):
    """View and delete only: no add form, and the change form is a read-only view."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("role", "status", "content", "model", "prompt_tokens", "completion_tokens")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EstimatedCountPaginator(Paginator):
    """A paginator whose count of an unfiltered PostgreSQL table is the planner's
    estimate (``pg_class.reltuples``, kept by autovacuum's ``ANALYZE``) instead of a
    ``COUNT(*)`` over millions of rows; filtered lists, small or never-analysed tables
    and other databases are counted exactly."""

    #: Tables estimated below this many rows are counted exactly.
    exact_below = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            estimate = _estimated_rows(queryset)
            if estimate is not None and estimate >= self.exact_below:
                return estimate
        return super().count


def _estimated_rows(queryset: QuerySet[Any]) -> int | None:
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [queryset.model._meta.db_table],
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


class LargeTableAdmin(ReadOnlyHistoryAdmin):
    """Lists that stay fast at millions of rows: newest first on the primary key, no
    ``COUNT(*)`` of the whole table (:class:`EstimatedCountPaginator`, and no second
    count of a filtered list), no date hierarchy (its drill-down reads every row's
    date), filters whose choices need no query, and search by exact, indexed values
    only (the chat-history search is the API's, on a full-text index)."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    ordering = ("-id",)


@admin.register(Conversation)
class ConversationAdmin(LargeTableAdmin):
    list_display = ("id", "title", "owner", "created_at", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("=id", "=owner__username", "=owner__email")
    search_help_text = "An id, or a user's exact username or email."
    list_filter = ("created_at", "updated_at")
    raw_id_fields = ("owner",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(LargeTableAdmin):
    list_display = ("id", "conversation", "owner", "role", "status", "model", "created_at")
    list_select_related = ("owner", "conversation")
    search_fields = ("=id", "=owner__username", "=client_id")
    search_help_text = "An id, a user's exact username, or a client_id."
    list_filter = ("role", "status", "cached", "created_at")
    raw_id_fields = ("owner", "conversation")
    # The JSON of the tool calls is shown formatted instead of as one long line.
    exclude = ("tool_calls",)
    readonly_fields = ("tool_calls_shown",)

    @admin.display(description="Tool calls")
    def tool_calls_shown(self, obj: Message) -> str:
        """The reply's tool calls and results (``Message.tool_calls``), one block each:
        name, status, time, arguments and result, JSON indented; "-" when none."""
        records = obj.tool_calls if isinstance(obj.tool_calls, list) else []
        if not records:
            return "-"
        blocks = []
        for record in records:
            if not isinstance(record, dict):
                continue
            head = (
                f"{record.get('name')} [{record.get('status')}"
                + (f" {record['error_code']}" if record.get("error_code") else "")
                + f"] {record.get('duration_ms')} ms"
            )
            blocks.append(
                format_html(
                    "<strong>{}</strong><pre>arguments: {}\nresult: {}</pre>",
                    head,
                    _indented(record.get("arguments")),
                    _indented(record.get("content")),
                )
            )
        return format_html_join("", "{}", ((block,) for block in blocks))


def _indented(text: Any) -> str:
    """JSON text indented for reading; any other text as it is."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(text or "")


@admin.register(Health)
class HealthAdmin(SinglePageAdmin):
    """The system-health dashboard as the change list of ``Health`` ("System health" in
    the admin index): ``mpai.view_health`` opens it, ``mpai.run_health_checks`` runs the
    checks and silences alerts (:mod:`mpai.health.dashboard`). Nothing to add, change
    or delete, and no other page.
    """

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        from .health.dashboard import dashboard_view

        return dashboard_view(self, request)


from mpai import admin_feedback  # noqa: E402,F401  (registers the feedback admin)
from mpai.usage import admin as usage_admin  # noqa: E402,F401  (registers the usage report)
