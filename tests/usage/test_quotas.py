"""Quotas per plan (mpai.usage.quotas): windows, retry_after, plans, staff, Redis down."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
import redis

from mpai.exceptions import MpaiError
from mpai.usage import quotas
from mpai.usage.models import QuotaRejection
from mpai.usage.quotas import QuotaExceeded, check_quota
from mpai.usage.recording import record_usage
from mpai.usage.windows import windows_at
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
# In the future: the counters expire at their window's end, on Redis' clock.
NOON = datetime.datetime(2030, 3, 14, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def seconds_until(end: datetime.datetime, now: datetime.datetime) -> float:
    return math.ceil((end - now).total_seconds() * 1000) / 1000


def zone_of_user(user: Any) -> str | None:
    return "America/New_York" if user.get_username().startswith("ny") else None


def test_quota_exceeded_is_an_mpai_error_with_code_status_and_retry_after() -> None:
    error = QuotaExceeded(retry_after=12.5, limit="messages_per_day", plan="default")
    assert isinstance(error, MpaiError)
    assert (error.code, error.status_code) == ("quota_exceeded", 429)
    assert error.as_payload() == {
        "code": "quota_exceeded",
        "detail": QuotaExceeded.default_detail,
        "retry_after": 12.5,
    }
    assert MpaiError.for_code("quota_exceeded").code == "quota_exceeded"


def test_the_http_api_answers_it_with_429_and_retry_after() -> None:
    from mpai.api.chat import error_response

    response = error_response(QuotaExceeded(retry_after=3600.2))
    assert response.status_code == 429
    assert response["Retry-After"] == "3601"
    assert response.data["code"] == "quota_exceeded"


def test_windows_in_utc_and_in_a_time_zone() -> None:
    windows = windows_at(at("2026-03-31T23:30:00+00:00"))
    assert windows.day == datetime.date(2026, 3, 31)
    assert windows.day_end == at("2026-04-01T00:00:00+00:00")
    assert windows.month_start == datetime.date(2026, 3, 1)
    assert windows.month_end == at("2026-04-01T00:00:00+00:00")
    import zoneinfo

    paris = zoneinfo.ZoneInfo("Europe/Paris")
    local = windows_at(at("2026-03-31T23:30:00+00:00"), paris)  # 01:30 on 1 April in Paris
    assert local.day == datetime.date(2026, 4, 1)
    assert local.day_end == at("2026-04-02T00:00:00+02:00")
    assert local.month_end == at("2026-05-01T00:00:00+02:00")
    # December rolls into January; the DST change (29 March) makes a 23-hour day.
    assert windows_at(at("2026-12-31T10:00:00+00:00")).month_end == at("2027-01-01T00:00:00+00:00")
    short = windows_at(at("2026-03-29T12:00:00+00:00"), paris)
    assert (short.day_end - at("2026-03-29T00:00:00+01:00")).total_seconds() == 23 * 3600


def test_messages_per_day_refuses_with_the_seconds_until_midnight(configure, make_user) -> None:
    configure()
    user = make_user()
    assert check_quota(user, now=NOON).messages == 1
    status = check_quota(user, now=NOON)
    assert (status.messages, status.source, status.quota) == (2, "redis", "default")
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(user, now=NOON + datetime.timedelta(minutes=1, seconds=0.5))
    assert caught.value.limit == "messages_per_day"
    assert caught.value.retry_after == seconds_until(
        at("2030-03-15T00:00:00+00:00"), NOON + datetime.timedelta(minutes=1, seconds=0.5)
    )
    assert QuotaRejection.objects.get(plan="default", limit="messages_per_day").count == 1
    # The next day is a new window.
    assert check_quota(user, now=NOON + datetime.timedelta(days=1)).messages == 1


def test_a_refused_check_counts_nothing(configure, make_user) -> None:
    configure()
    user = make_user()
    check_quota(user, now=NOON)
    check_quota(user, now=NOON)
    for _ in range(3):
        with pytest.raises(QuotaExceeded):
            check_quota(user, now=NOON)
    assert QuotaRejection.objects.get(limit="messages_per_day").count == 3
    configure(QUOTAS={"default": {"messages_per_day": 3}})
    assert check_quota(user, now=NOON).messages == 3  # the refusals were not counted


def test_token_limits_are_reconciled_after_the_reply_and_may_overshoot_once(
    configure, make_user, adapter
) -> None:
    configure()
    user = make_user()
    adapter.held[user.get_username()] = "Pro"
    check_quota(user, now=NOON)
    record_usage(user, model="gpt-test", prompt_tokens=600, completion_tokens=300, now=NOON)
    assert check_quota(user, now=NOON).day_tokens == 900  # under 1,000: allowed
    record_usage(user, model="gpt-test", prompt_tokens=500, completion_tokens=100, now=NOON)
    with pytest.raises(QuotaExceeded) as caught:  # 1,500 >= 1,000: the reply overshot once
        check_quota(user, now=NOON)
    assert (caught.value.limit, caught.value.plan) == ("tokens_per_day", "Pro")
    tomorrow = NOON + datetime.timedelta(days=1)
    status = check_quota(user, now=tomorrow)
    assert (status.day_tokens, status.month_tokens) == (0, 1500)


def test_tokens_per_month_refuses_until_the_first_of_next_month(
    configure, make_user, adapter
) -> None:
    configure()
    user = make_user()
    adapter.held[user.get_username()] = "Pro"
    for day in (1, 2, 3):
        moment = NOON.replace(day=day)
        check_quota(user, now=moment)
        record_usage(user, model="gpt-test", prompt_tokens=900, completion_tokens=100, now=moment)
    later = NOON.replace(day=20)
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(user, now=later)
    assert caught.value.limit == "tokens_per_month"
    assert caught.value.retry_after == seconds_until(at("2030-04-01T00:00:00+00:00"), later)
    assert check_quota(user, now=at("2030-04-01T00:00:00+00:00")).month_tokens == 0


def test_windows_follow_the_users_time_zone(configure, make_user) -> None:
    configure(QUOTA_TIMEZONE="tests.usage.test_quotas.zone_of_user")
    user = make_user("ny-member")
    late = at("2030-03-15T03:00:00+00:00")  # 23:00 on 14 March in New York (EDT)
    check_quota(user, now=late)
    check_quota(user, now=late)
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(user, now=late)
    assert caught.value.retry_after == 3600.0  # midnight in New York, 04:00 UTC
    assert check_quota(user, now=at("2030-03-15T04:00:00+00:00")).messages == 1
    # A user in UTC had their day end at 00:00 UTC.
    other = make_user()
    check_quota(other, now=at("2030-03-14T23:00:00+00:00"))
    check_quota(other, now=at("2030-03-14T23:00:00+00:00"))
    assert check_quota(other, now=late).messages == 1


def test_a_plan_change_takes_effect_on_the_next_check(configure, make_user, adapter) -> None:
    configure()
    user = make_user()
    check_quota(user, now=NOON)
    check_quota(user, now=NOON)
    with pytest.raises(QuotaExceeded):
        check_quota(user, now=NOON)
    adapter.held[user.get_username()] = "Pro"  # upgraded: 5 a day
    status = check_quota(user, now=NOON)
    assert (status.plan, status.quota, status.messages) == ("Pro", "Pro", 3)
    adapter.held[user.get_username()] = "Unknown plan"  # a plan QUOTAS does not list
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(user, now=NOON)
    assert caught.value.plan == "default"


def test_staff_are_unlimited_unless_quotas_apply_to_staff(configure, make_user) -> None:
    configure()
    staff = make_user(is_staff=True)
    for _ in range(5):
        assert check_quota(staff, now=NOON).source == "none"
    configure(QUOTAS_APPLY_TO_STAFF=True)
    check_quota(staff, now=NOON)
    check_quota(staff, now=NOON)
    with pytest.raises(QuotaExceeded):
        check_quota(staff, now=NOON)


def test_unlimited_plans_touch_nothing(configure, make_user, own_redis) -> None:
    configure(
        QUOTAS={"default": {"messages_per_day": None}},
        RATE_LIMIT={"REDIS_URL": f"{own_redis.url}/0"},
    )
    user = make_user()
    assert check_quota(user, now=NOON).source == "none"
    assert redis.Redis.from_url(own_redis.url).dbsize() == 0


def test_counters_lost_by_redis_are_refilled_from_the_usage_rows(
    configure, make_user, own_redis
) -> None:
    url = f"{own_redis.url}/0"
    configure(RATE_LIMIT={"REDIS_URL": url, "OUTAGE_BACKOFF": 0})
    user = make_user()
    check_quota(user, now=NOON)
    record_usage(user, model="gpt-test", prompt_tokens=10, completion_tokens=5, now=NOON)
    redis.Redis.from_url(url).flushdb()  # a restart without persistence
    status = check_quota(user, now=NOON)
    assert (status.source, status.messages, status.day_tokens) == ("redis", 2, 15)
    with pytest.raises(QuotaExceeded):
        check_quota(user, now=NOON)


def test_when_redis_is_down_the_usage_rows_decide_and_redis_is_used_again_after(
    configure, make_user, own_redis
) -> None:
    configure(RATE_LIMIT={"REDIS_URL": f"{own_redis.url}/0", "OUTAGE_BACKOFF": 0})
    user = make_user()
    assert check_quota(user, now=NOON).source == "redis"
    record_usage(user, model="gpt-test", prompt_tokens=1, completion_tokens=1, now=NOON)
    own_redis.stop()  # mid-test: connections refused
    status = check_quota(user, now=NOON)
    assert (status.source, status.messages) == ("database", 2)  # one recorded turn + this
    record_usage(user, model="gpt-test", prompt_tokens=1, completion_tokens=1, now=NOON)
    with pytest.raises(QuotaExceeded) as caught:  # two rows: the limit, from the database
        check_quota(user, now=NOON)
    assert caught.value.limit == "messages_per_day"
    own_redis.start()  # back, empty: the counters are refilled from the rows
    counters = quotas._get_counters()
    assert counters is not None

    def refused_by_redis() -> bool:
        with pytest.raises(QuotaExceeded):  # from either store: two turns recorded
            check_quota(user, now=NOON)
        return counters.breaker.state == "closed"  # a pooled connection may fail once

    wait_until(refused_by_redis, what="the quota check uses Redis again")
    assert redis.Redis.from_url(own_redis.url).hget(quotas._keys(user.pk, windows_at(NOON))[0], "m")


def test_without_redis_the_database_decides(configure, make_user, settings) -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CACHES = caches
    configure()
    user = make_user()
    assert check_quota(user, now=NOON).source == "database"


def test_when_redis_and_the_database_fail_the_message_is_allowed(
    configure, make_user, own_redis, monkeypatch
) -> None:
    configure(RATE_LIMIT={"REDIS_URL": f"{own_redis.url}/0", "OUTAGE_BACKOFF": 0})
    user = make_user()
    own_redis.stop()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database down")

    monkeypatch.setattr(quotas.store, "window_counts", broken)
    assert check_quota(user, now=NOON).source == "fail_open"


def test_a_database_failure_while_filling_a_counter_fails_open(
    configure, make_user, own_redis, monkeypatch
) -> None:
    configure(RATE_LIMIT={"REDIS_URL": f"{own_redis.url}/0", "OUTAGE_BACKOFF": 0})
    user = make_user()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database down")

    monkeypatch.setattr(quotas.store, "window_counts", broken)
    assert check_quota(user, now=NOON).source == "fail_open"
    monkeypatch.undo()
    assert check_quota(user, now=NOON).source == "redis"
