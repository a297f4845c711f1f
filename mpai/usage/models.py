"""Usage rows: one per (user, day, model), and the quota rejections per (day, plan, limit).

``day`` is the date in the user's quota time zone (:mod:`mpai.usage.windows`: UTC unless
``MPAI["QUOTA_TIMEZONE"]`` names one), so a day's row is exactly the quota's day
window and the database can stand in for Redis (:mod:`mpai.usage.quotas`). Rows are
only ever changed by the atomic upserts of :mod:`mpai.usage.store`.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

#: Digits of a cost: up to 10**12 in the currency with 10 decimal places.
COST_DIGITS = 22
COST_PLACES = 10


class UsageDay(models.Model):
    """A user's turns with one model on one day (UTC, or the user's quota time zone).

    Attributes:
        requests: turns recorded (replays of an earlier send are not).
        prompt_tokens, completion_tokens: tokens in and out (the provider's ``usage``,
            or mpai's estimate for ``estimated_requests`` of them; 0 for cached ones).
        cost: in ``MPAI["CURRENCY"]``, from ``MPAI["PRICES"]`` (cached replies cost 0).
        estimated_requests: turns whose provider sent no ``usage``.
        cached_requests: turns answered from the response cache.
        plan: the user's plan at the last turn recorded ("" = no plan).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    model = models.CharField(max_length=100, blank=True, default="")
    plan = models.CharField(max_length=100, blank=True, default="")
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(
        max_digits=COST_DIGITS, decimal_places=COST_PLACES, default=Decimal(0)
    )
    estimated_requests = models.PositiveIntegerField(default=0)
    cached_requests = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "mpai_usage_day"
        verbose_name = "usage day"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "day", "model"], name="mpai_usage_user_day_model_uniq"
            )
        ]
        indexes = [models.Index(fields=["day"], name="mpai_usage_day_idx")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day} {self.model}: {self.requests} requests"


class QuotaRejection(models.Model):
    """Checks refused by a quota on one day (UTC), per plan and limit.

    ``limit`` is ``messages_per_day``, ``tokens_per_day`` or ``tokens_per_month``;
    ``plan`` the ``MPAI["QUOTAS"]`` key applied (``default`` for users without a plan).
    """

    day = models.DateField()
    plan = models.CharField(max_length=100)
    limit = models.CharField(max_length=40)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "mpai_quota_rejection"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "plan", "limit"], name="mpai_quota_rejection_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.plan} {self.limit}: {self.count}"


class UsageReport(UsageDay):
    """The usage report's entry in the admin (``/admin/mpai/usagereport/``).

    A proxy, so the page sits in the admin index under mpai with Django's own
    permission ``mpai.view_usagereport``.
    """

    class Meta:
        proxy = True
        verbose_name = "usage and cost report"
        verbose_name_plural = "usage and cost report"
        default_permissions = ("view",)
