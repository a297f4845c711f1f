"""Retention of the usage rows: ``MPAI["USAGE_RETENTION_DAYS"]`` (400 by default)."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from mpai.conf import mpai_settings
from mpai.usage.models import QuotaRejection, UsageDay


def _delete_in_batches(queryset: Any, batch: int) -> int:
    deleted = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        count, _ = queryset.model.objects.filter(pk__in=ids).delete()
        deleted += count


def cleanup_usage(*, today: datetime.date | None = None) -> dict[str, Any]:
    """Delete :class:`UsageDay` and :class:`QuotaRejection` rows whose ``day`` is more
    than ``USAGE_RETENTION_DAYS`` days before ``today`` (UTC date by default), in
    batches of ``MPAI["CLEANUP_BATCH_SIZE"]`` rows (one short statement each).

    Returns:
        ``{"usage_rows_deleted": int, "rejection_rows_deleted": int, "before": ISO date}``
        (rows with ``day`` before ``before`` were deleted).
    """
    today = today or timezone.now().astimezone(datetime.UTC).date()
    before = today - datetime.timedelta(days=int(mpai_settings.USAGE_RETENTION_DAYS))
    batch = max(1, int(mpai_settings.CLEANUP_BATCH_SIZE))
    return {
        "usage_rows_deleted": _delete_in_batches(UsageDay.objects.filter(day__lt=before), batch),
        "rejection_rows_deleted": _delete_in_batches(
            QuotaRejection.objects.filter(day__lt=before), batch
        ),
        "before": before.isoformat(),
    }
