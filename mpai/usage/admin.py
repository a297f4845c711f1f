"""The usage and cost report in the admin (``/admin/mpai/usagereport/``), as the change
list of the proxy model :class:`~mpai.usage.models.UsageReport` ("Usage and cost
report" in the admin index), the pattern of the system-health dashboard.

``mpai.view_usagereport`` opens it (the admin site's login for everyone else).
``?start=&end=`` (YYYY-MM-DD) choose the period (:func:`mpai.usage.reports.period_of`);
``?format=csv`` streams the period's rows as CSV (:func:`mpai.usage.reports.csv_lines`).
Nothing to add, change or delete.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse

from mpai.admin_pages import SinglePageAdmin
from mpai.usage import reports
from mpai.usage.models import UsageReport

TEMPLATE = "mpai/usage/report.html"


@admin.register(UsageReport)
class UsageReportAdmin(SinglePageAdmin):
    """Usage, cost and quota rejections by day, plan, model and top users, with charts
    and a CSV export (module docs)."""

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        from django.core.exceptions import PermissionDenied

        if not self.has_view_permission(request):
            raise PermissionDenied
        period = reports.period_of(request.GET)
        if request.GET.get("format") == "csv":
            response = StreamingHttpResponse(
                reports.csv_lines(period), content_type="text/csv; charset=utf-8"
            )
            response["Content-Disposition"] = (
                f'attachment; filename="mpai-usage-{period.start}-{period.end}.csv"'
            )
            return response  # type: ignore[return-value]  # the stubs say HttpResponse
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Usage and cost",
            "period": period,
            **reports.usage_report(period),
            **(extra_context or {}),
        }
        return TemplateResponse(request, TEMPLATE, context)
