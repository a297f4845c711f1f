"""The quota windows: the user's time zone, the current day and month, their resets.

Windows are calendar days and months in **UTC** by default. ``MPAI["QUOTA_TIMEZONE"]``
may name (import string) a callable ``(user) -> str | tzinfo | None`` giving a user's
zone (an IANA name such as ``"Europe/Paris"``); None or an unknown name means UTC. The
usage rows' ``day`` is the date in the same zone, so the rows and the windows agree.
"""

from __future__ import annotations

import datetime
import logging
import zoneinfo
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from mpai.conf import mpai_settings

logger = logging.getLogger("mpai.usage")

UTC = datetime.UTC


@dataclass(frozen=True, slots=True)
class Windows:
    """The quota windows containing one moment, in one zone.

    Attributes:
        zone: the time zone of the windows.
        day: the local date (the usage rows' ``day``).
        day_end: the next local midnight (aware datetime), when the day quotas reset.
        month_start: the local first day of the month (a date).
        month_end: local midnight of the next month's first day (aware datetime).
    """

    zone: datetime.tzinfo
    day: datetime.date
    day_end: datetime.datetime
    month_start: datetime.date
    month_end: datetime.datetime

    def seconds_to(self, end: datetime.datetime, now: datetime.datetime) -> float:
        """Seconds (float, >= 0.001) from ``now`` until ``end``."""
        return max(0.001, (end - now).total_seconds())


def _local_midnight(day: datetime.date, zone: datetime.tzinfo) -> datetime.datetime:
    # Midnight may not exist (a DST gap at 00:00): fold=0 and a round trip through UTC
    # give the first instant of the day that does.
    naive = datetime.datetime.combine(day, datetime.time())
    aware = naive.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone)


def windows_at(now: datetime.datetime, zone: datetime.tzinfo = UTC) -> Windows:
    """The day and month windows containing ``now`` (aware) in ``zone``."""
    local = now.astimezone(zone)
    day = local.date()
    next_day = day + datetime.timedelta(days=1)
    month_start = day.replace(day=1)
    next_month = (month_start + datetime.timedelta(days=32)).replace(day=1)
    return Windows(
        zone=zone,
        day=day,
        day_end=_local_midnight(next_day, zone),
        month_start=month_start,
        month_end=_local_midnight(next_month, zone),
    )


def zone_for(user: Any) -> datetime.tzinfo:
    """The user's quota zone: ``MPAI["QUOTA_TIMEZONE"](user)``, else UTC.

    A callable that raises or names an unknown zone gives UTC (logged), never an error.
    """
    rule = mpai_settings.QUOTA_TIMEZONE
    if rule is None:
        return UTC
    try:
        value = rule(user)
    except Exception:
        logger.exception("mpai usage: MPAI['QUOTA_TIMEZONE'] failed; using UTC")
        return UTC
    if value is None:
        return UTC
    if isinstance(value, datetime.tzinfo):
        return value
    try:
        return zoneinfo.ZoneInfo(str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        logger.warning("mpai usage: unknown time zone %r for a user; using UTC", value)
        return UTC


def user_windows(user: Any, now: datetime.datetime | None = None) -> Windows:
    """:func:`windows_at` of ``now`` (default: the current time) in the user's zone."""
    return windows_at(now or timezone.now(), zone_for(user))
