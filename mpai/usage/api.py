"""``GET /api/mpai/v1/usage/``: the signed-in user's own usage, limits and resets.

Response (200)::

    {"plan": "Monthly" | null,
     "today": {"requests": 3, "prompt_tokens": 1200, "completion_tokens": 340,
               "cost": "0.0064000000"},
     "month": {... the same keys, this calendar month ...},
     "limits": {"messages_per_day": 50 | null, "tokens_per_day": null,
                "tokens_per_month": 200000 | null},
     "resets_at": {"day": "2026-12-05T00:00:00+00:00", "month": "2027-01-01T00:00:00+00:00"}}

Tokens are counts, ``cost`` a decimal string in ``MPAI["CURRENCY"]``; days and months
are those of the quotas (UTC, or the user's ``MPAI["QUOTA_TIMEZONE"]``), ``resets_at``
ISO 8601 instants in that zone. ``limits`` are the user's plan's (all null for staff
unless ``QUOTAS_APPLY_TO_STAFF``). Figures come from the usage rows (turns recorded
after their reply). Errors: 401 when signed out (``WWW-Authenticate: Token`` with token
authentication).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mpai.api.auth import AuthenticateHeaderMixin
from mpai.usage import store
from mpai.usage.quotas import limits_for, plan_of
from mpai.usage.windows import user_windows


def _figures(name: str) -> serializers.Serializer:
    return inline_serializer(
        name,
        {
            "requests": serializers.IntegerField(),
            "prompt_tokens": serializers.IntegerField(),
            "completion_tokens": serializers.IntegerField(),
            "cost": serializers.DecimalField(max_digits=22, decimal_places=10),
        },
    )


def usage_summary(user: Any) -> dict[str, Any]:
    """The endpoint's body for ``user`` (module docs for the shape); three queries at
    most (the plan, today's rows, the month's rows)."""
    plan = plan_of(user)
    _, limits = limits_for(user, plan)
    windows = user_windows(user)
    return {
        "plan": plan,
        "today": store.totals(user.pk, windows.day, windows.day).as_dict(),
        "month": store.totals(user.pk, windows.month_start, windows.day).as_dict(),
        "limits": limits.as_dict(),
        "resets_at": {
            "day": windows.day_end.isoformat(),
            "month": windows.month_end.isoformat(),
        },
    }


@extend_schema(
    summary="The signed-in user's usage today and this month, plan limits and resets",
    responses=inline_serializer(
        "UsageResponse",
        {
            "plan": serializers.CharField(allow_null=True),
            "today": _figures("UsageToday"),
            "month": _figures("UsageMonth"),
            "limits": inline_serializer(
                "UsageLimits",
                {
                    "messages_per_day": serializers.IntegerField(allow_null=True),
                    "tokens_per_day": serializers.IntegerField(allow_null=True),
                    "tokens_per_month": serializers.IntegerField(allow_null=True),
                },
            ),
            "resets_at": inline_serializer(
                "UsageResets",
                {"day": serializers.DateTimeField(), "month": serializers.DateTimeField()},
            ),
        },
    ),
)
class UsageView(AuthenticateHeaderMixin, APIView):
    """The usage endpoint (see the module docstring for the shape and errors)."""

    schema = AutoSchema()
    permission_classes = [permissions.IsAuthenticated]

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(usage_summary(request.user))
