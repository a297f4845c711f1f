"""The admin page of :class:`~mpai.models.Feedback`: view and delete only, like the chat
history it rates (:class:`mpai.admin.ReadOnlyHistoryAdmin`): feedback is what a user
said, so staff never edit or add it.

The change list filters by rating, the rated message's model and date, and shows above
the list the counts of ``up`` and ``down`` by model for the rows the filters select
(one aggregate query, :func:`mpai.feedback.counts_by_model`). Imported at the bottom of
:mod:`mpai.admin`, which registers it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from mpai.admin import ReadOnlyHistoryAdmin
from mpai.feedback import counts_by_model
from mpai.models import Feedback

_COMMENT_PREVIEW_CHARS = 80


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyHistoryAdmin):
    change_list_template = "admin/mpai/feedback/change_list.html"
    list_display = (
        "id",
        "rating",
        "message_model",
        "user",
        "message",
        "comment_preview",
        "created_at",
        "updated_at",
    )
    list_select_related = ("user", "message")
    list_filter = ("rating", "message__model", "created_at")
    search_fields = ("comment", "user__username", "user__email")
    date_hierarchy = "created_at"
    raw_id_fields = ("user", "message")

    @admin.display(description="model", ordering="message__model")
    def message_model(self, obj: Feedback) -> str:
        return obj.message.model

    @admin.display(description="comment")
    def comment_preview(self, obj: Feedback) -> str:
        if len(obj.comment) <= _COMMENT_PREVIEW_CHARS:
            return obj.comment
        return obj.comment[: _COMMENT_PREVIEW_CHARS - 1] + "…"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The change list, with ``feedback_by_model`` (see the module docstring) in the
        context when the list renders (not on a redirect or an error page)."""
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        changelist = context.get("cl") if context else None
        if context is not None and changelist is not None:
            context["feedback_by_model"] = counts_by_model(changelist.queryset)
        return response
