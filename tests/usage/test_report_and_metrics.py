"""The admin's usage report, its CSV export, the usage metrics at /metrics, retention."""

from __future__ import annotations

import csv
import datetime
import io
from decimal import Decimal

import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from mpai.usage.cleanup import cleanup_usage
from mpai.usage.models import QuotaRejection, UsageDay
from mpai.usage.quotas import QuotaExceeded, check_quota
from mpai.usage.recording import record_usage
from mpai.usage.store import add_rejection, add_usage

pytestmark = pytest.mark.django_db

URL = "/admin/mpai/usagereport/"
TOKEN = "scrape-token-for-usage-tests"


@pytest.fixture
def admin_client_(make_user):
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def rows(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    day = datetime.date(2030, 5, 10)
    add_usage(
        user_id=alice.pk,
        day=day,
        model="gpt-a",
        plan="Pro",
        prompt_tokens=1000,
        completion_tokens=200,
        cost=Decimal("0.0045"),
    )
    add_usage(user_id=alice.pk, day=day, model="gpt-a", plan="Pro", cached=True)
    add_usage(
        user_id=bob.pk,
        day=day + datetime.timedelta(days=1),
        model="gpt-b",
        prompt_tokens=10,
        completion_tokens=5,
        cost=Decimal("0.75"),
        estimated=True,
    )
    add_usage(user_id=bob.pk, day=datetime.date(2030, 1, 1), model="gpt-b", prompt_tokens=1)
    add_rejection(day=day, plan="default", limit="messages_per_day")
    add_rejection(day=day, plan="default", limit="messages_per_day")
    return alice, bob


def test_the_report_is_in_the_admin_index(admin_client_):
    response = admin_client_.get("/admin/")
    assert URL in response.content.decode()


def test_the_report_shows_the_period_by_day_plan_model_and_user(admin_client_, rows):
    response = admin_client_.get(URL, {"start": "2030-05-01", "end": "2030-05-31"})
    assert response.status_code == 200
    page = response.content.decode()
    context = response.context
    assert context["totals"]["requests"] == 3
    assert context["totals"]["cost"] == Decimal("0.7545")
    assert [(row["name"], row["requests"]) for row in context["plans"]] == [
        ("(none)", 1),
        ("Pro", 2),
    ]
    assert [row["name"] for row in context["models"]] == ["gpt-b", "gpt-a"]  # by cost
    assert [row["name"] for row in context["users"]] == ["bob", "alice"]
    assert len(context["days"]) == 31
    assert context["rejected"] == 2
    assert context["rejections"] == [{"plan": "default", "limit": "messages_per_day", "count": 2}]
    assert page.count('<svg class="mpai-chart"') == 3
    for text in ("Tokens per day", "alice", "gpt-b", "Export CSV"):
        assert text in page
    assert 'id="mpai-usage-rejected">2<' in page


def test_a_bad_date_falls_back_to_the_default_period(admin_client_):
    response = admin_client_.get(URL, {"start": "not-a-date"})
    assert response.status_code == 200
    assert len(response.context["days"]) == 30
    assert "Ignored: start" in response.content.decode()


def test_the_csv_export_streams_one_line_per_day_plan_and_model(admin_client_, rows):
    response = admin_client_.get(URL, {"start": "2030-05-01", "end": "2030-05-31", "format": "csv"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert lines[0][:4] == ["day", "plan", "model", "requests"]
    assert lines[1:] == [
        ["2030-05-10", "Pro", "gpt-a", "2", "1000", "200", "0.0045000000", "USD", "0", "1"],
        ["2030-05-11", "", "gpt-b", "1", "10", "5", "0.7500000000", "USD", "1", "0"],
    ]


def test_signed_out_or_non_staff_users_get_the_admin_login(client, make_user):
    assert client.get(URL).status_code == 302
    client.force_login(make_user(is_staff=True))  # staff without the view permission
    assert client.get(URL).status_code == 403


def _families(client):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return list(text_string_to_metric_families(response.content.decode()))


def _sample(families, name, **labels):
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_cost_and_quota_rejections_appear_at_metrics(client, make_user, adapter):
    quotas = {"default": {"messages_per_day": 0}, "Gold": {"messages_per_day": 0}}
    mpai = {
        "METRICS_TOKEN": TOKEN,
        "METRICS_ENABLED": True,
        "MEMBERSHIP_ADAPTER": adapter,
        "PRICES": {"metric-model": {"input": "1000000", "output": "0"}},
        "QUOTAS": quotas,
    }
    user = make_user()
    with override_settings(MPAI=mpai):
        before = _families(client)
        record_usage(user, model="metric-model", prompt_tokens=3, completion_tokens=0)
        with pytest.raises(QuotaExceeded):
            check_quota(user)
        adapter.held[user.get_username()] = "Gold"
        with pytest.raises(QuotaExceeded):
            check_quota(user)
        after = _families(client)
    cost = ("mpai_cost_total", {"model": "metric-model", "currency": "USD"})
    assert _sample(after, cost[0], **cost[1]) - _sample(before, cost[0], **cost[1]) == 3.0
    for plan in ("default", "Gold"):
        grown = _sample(after, "mpai_quota_exceeded_total", plan=plan) - _sample(
            before, "mpai_quota_exceeded_total", plan=plan
        )
        assert grown == 1.0
    assert {f.name for f in after} >= {"mpai_cost", "mpai_quota_exceeded"}
    assert {f.type for f in after if f.name in ("mpai_cost", "mpai_quota_exceeded")} == {"counter"}


def test_retention_deletes_rows_older_than_the_setting(make_user, settings):
    user = make_user()
    today = datetime.date(2030, 6, 1)
    for age in (0, 10, 11, 400):
        add_usage(user_id=user.pk, day=today - datetime.timedelta(days=age), model="m")
        add_rejection(day=today - datetime.timedelta(days=age), plan="default", limit="x")
    settings.MPAI = {**settings.MPAI, "USAGE_RETENTION_DAYS": 10, "CLEANUP_BATCH_SIZE": 1}
    result = cleanup_usage(today=today)
    assert result == {"usage_rows_deleted": 2, "rejection_rows_deleted": 2, "before": "2030-05-22"}
    assert sorted((today - row.day).days for row in UsageDay.objects.all()) == [0, 10]
    assert QuotaRejection.objects.count() == 2


def test_the_celery_task_runs_the_cleanup(make_user):
    from mpai.tasks import cleanup_usage as task

    user = make_user()
    add_usage(user_id=user.pk, day=datetime.date(2000, 1, 1), model="m")
    result = task.apply().get()
    assert result["usage_rows_deleted"] == 1
