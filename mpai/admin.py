"""Admin pages for conversations and messages (view and delete, never edit or add) and
the system-health dashboard.

Chat history is a record of what was said: a message or conversation changed or added
by hand would be presented as if the user or the model had said it (and fed back to
the model as context). So the admin shows both read-only; staff with the delete
permission can still delete them (README, "Security defaults of the demo").
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

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


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyHistoryAdmin):
    list_display = ("id", "title", "owner", "created_at", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("title", "owner__username", "owner__email")
    list_filter = ("created_at", "updated_at")
    date_hierarchy = "updated_at"
    raw_id_fields = ("owner",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(ReadOnlyHistoryAdmin):
    list_display = ("id", "conversation", "owner", "role", "status", "model", "created_at")
    list_select_related = ("owner", "conversation")
    search_fields = ("content", "owner__username", "client_id")
    list_filter = ("role", "status", "cached", "model", "created_at")
    date_hierarchy = "created_at"
    raw_id_fields = ("owner", "conversation")


@admin.register(Health)
class HealthAdmin(admin.ModelAdmin):
    """The system-health dashboard as the change list of ``Health`` ("System health" in
    the admin index): ``mpai.view_health`` opens it, ``mpai.run_health_checks`` runs the
    checks and silences alerts (:mod:`mpai.health.dashboard`). Nothing to add, change
    or delete, and no other page.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        from .health.dashboard import dashboard_view

        return dashboard_view(self, request)


from mpai import admin_feedback  # noqa: E402,F401  (registers the feedback admin)
