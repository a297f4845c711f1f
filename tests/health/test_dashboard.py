"""The admin's system-health dashboard (/admin/mpai/health/): who may see it and press
its buttons, what it shows, and its SVG charts."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from mpai.health import charts, dashboard
from mpai.health.models import HealthAlert, HealthSnapshot
from mpai.models import MetricBucket

pytestmark = pytest.mark.django_db

URL = "/admin/mpai/health/"
RESULTS = [
    {
        "name": "database",
        "status": "ok",
        "message": "PostgreSQL answers",
        "duration_ms": 1.5,
        "details": {},
    },
    {
        "name": "cache:default",
        "status": "warning",
        "message": "slow <b>cache</b>",
        "duration_ms": 120.25,
        "details": {},
    },
    {
        "name": "memory",
        "status": "ok",
        "message": "resident 80 MiB",
        "duration_ms": 0.4,
        "details": {"rss_bytes": 80 * 2**20},
    },
    {
        "name": "provider",
        "status": "error",
        "message": "no answer",
        "duration_ms": 3000.0,
        "details": {},
    },
]


def grant(user: Any, *codenames: str) -> Any:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="mpai", codename__in=codenames)
    )
    return type(user).objects.get(pk=user.pk)  # no cached permissions


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(make_user) -> Client:
    return client_for(grant(make_user(is_staff=True), "view_health"))


@pytest.fixture
def operator(make_user) -> Any:
    return grant(make_user(is_staff=True), "view_health", "run_health_checks")


@pytest.fixture
def snapshot() -> HealthSnapshot:
    return HealthSnapshot.objects.create(
        status="error", duration_ms=3001.0, results=RESULTS, trigger="schedule"
    )


@pytest.fixture
def alert() -> HealthAlert:
    now = timezone.now()
    return HealthAlert.objects.create(
        check_name="provider",
        severity="error",
        state="firing",
        message="no answer",
        first_seen=now - timedelta(hours=1),
        last_seen=now,
        fired_at=now,
        count=3,
    )


def test_anonymous_is_sent_to_the_admin_login():
    response = Client().get(URL)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={URL}"


def test_non_staff_is_sent_to_the_admin_login(make_user):
    user = grant(make_user(), "view_health", "run_health_checks")
    response = client_for(user).get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert client_for(user).post(URL, {"action": "run"}).status_code == 302
    assert not HealthSnapshot.objects.exists()


def test_staff_without_the_view_permission_gets_403(make_user):
    client = client_for(make_user(is_staff=True))
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"action": "run"}).status_code == 403


def test_viewer_sees_every_check_the_charts_and_the_last_runs(viewer, snapshot):
    response = viewer.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    for result in RESULTS:
        assert result["name"] in page
    assert "slow &lt;b&gt;cache&lt;/b&gt;" in page  # messages are escaped
    assert "120.2 ms" in page or "120.3 ms" in page
    assert page.count('<svg class="mpai-chart"') == 6
    assert page.count('role="img"') == 6
    assert "Process memory (resident)" in page
    assert "mpai/health.css" in page
    # Status badges say it in words, not by colour alone.
    assert re.search(r'mpai-badge-error"><span aria-hidden="true">✗</span> Error', page)
    assert re.search(r'mpai-badge-warning"><span aria-hidden="true">!</span> Warning', page)
    # The breadcrumbs and title of the admin.
    assert '<a href="/admin/">Home</a>' in page
    assert "<title>System health" in page
    # A viewer has no button.
    assert "Run checks now" not in page
    assert 'name="action"' not in page
    snapshots = page.split('id="mpai-health-snapshots"')[1].split("</table>")[0]
    assert snapshots.count("<tr>") == 2  # header + the one run


def test_the_page_without_any_snapshot(viewer, settings):
    # The metrics of this test's database only (other tests' turns stay in the Redis).
    # and none left by other tests' recorder threads (they commit on their own).
    settings.MPAI = {**getattr(settings, "MPAI", {}), "METRICS_REDIS_URL": ""}
    MetricBucket.objects.all().delete()  # inside this test's transaction: rolled back
    response = viewer.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert "No check has run yet." in page
    assert page.count('<svg class="mpai-chart"') == 6
    assert "No data in this window." in page


def test_memory_chart_draws_the_snapshots_memory(viewer, snapshot):
    HealthSnapshot.objects.create(
        status="ok",
        duration_ms=5.0,
        trigger="manual",
        results=[
            {
                "name": "memory",
                "status": "ok",
                "message": "",
                "duration_ms": 1.0,
                "details": {"resident_bytes": 90 * 2**20},
            }
        ],
    )
    HealthSnapshot.objects.create(  # no figure: tolerated
        status="ok",
        duration_ms=5.0,
        trigger="manual",
        results=[{"name": "memory", "status": "ok", "message": "", "duration_ms": 1.0}],
    )
    since = timezone.now() - timedelta(days=1)
    samples = dashboard.memory_samples(since)
    assert [value for _, value in samples] == [80 * 2**20, 90 * 2**20]
    page = viewer.get(URL).content.decode()
    memory = page.split("Process memory (resident)")[1].split("</svg>")[0]
    assert "<polyline" in memory
    assert "MiB" in memory
    assert "Latest: resident memory 90 MiB." in memory


def test_week_window(viewer, snapshot):
    page = viewer.get(URL, {"window": "7d"}).content.decode()
    assert '<strong aria-current="page">Last 7 days</strong>' in page
    assert '<a href="?window=24h">Last 24 hours</a>' in page
    # Day labels ("Mon 3") on the x axis rather than hours.
    assert re.search(r">(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{1,2}</text>", page)
    day = viewer.get(URL, {"window": "nonsense"}).content.decode()
    assert '<strong aria-current="page">Last 24 hours</strong>' in day
    assert re.search(r">\d\d:00</text>", day)


def test_operator_sees_the_run_button_and_the_silence_form(operator, snapshot, alert):
    page = client_for(operator).get(URL).content.decode()
    assert "Run checks now" in page
    assert 'name="csrfmiddlewaretoken"' in page
    open_alerts = page.split('id="mpai-health-open-alerts"')[1].split("</table>")[0]
    assert "provider" in open_alerts
    assert "Firing" in open_alerts
    assert "Not silenced" in open_alerts
    assert 'value="silence"' in open_alerts
    for choice in ("1 hour", "4 hours", "24 hours", "7 days"):
        assert choice in open_alerts


def test_run_needs_the_run_permission(viewer):
    assert viewer.post(URL, {"action": "run"}).status_code == 403
    assert not HealthSnapshot.objects.exists()


def test_run_checks_now_stores_a_manual_snapshot_and_redirects_back(operator, snapshot):
    client = client_for(operator)
    response = client.post(f"{URL}?window=7d", {"action": "run"})
    assert response.status_code == 302
    assert response["Location"] == f"{URL}?window=7d"
    assert HealthSnapshot.objects.count() == 2
    newest = HealthSnapshot.objects.first()
    assert newest is not None
    assert (newest.trigger, newest.pk != snapshot.pk) == ("manual", True)
    page = client.get(response["Location"]).content.decode()
    assert "Checks run:" in page  # the success message
    snapshots = page.split('id="mpai-health-snapshots"')[1].split("</table>")[0]
    assert snapshots.count("<tr>") == 3
    assert "manual" in snapshots
    for result in newest.results:
        assert result["name"] in page


def test_run_with_a_csrf_checking_client_needs_the_token(operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.post(URL, {"action": "run"}).status_code == 403
    assert not HealthSnapshot.objects.exists()


def test_silence_then_unsilence(operator, alert):
    client = client_for(operator)
    before = timezone.now()
    response = client.post(
        URL, {"action": "silence", "alert": alert.pk, "duration": "4h", "reason": "Deploying"}
    )
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.silenced_until is not None
    assert (
        before + timedelta(hours=4) <= alert.silenced_until <= timezone.now() + timedelta(hours=4)
    )
    assert (alert.silence_reason, alert.silenced_by_id) == ("Deploying", operator.pk)
    page = client.get(URL).content.decode()
    assert "silenced for 4 hours" in page
    open_alerts = page.split('id="mpai-health-open-alerts"')[1].split("</table>")[0]
    assert "<strong>Silenced</strong> until" in open_alerts
    assert f"by {operator.get_username()}: Deploying" in open_alerts
    assert 'value="unsilence"' in open_alerts

    response = client.post(URL, {"action": "unsilence", "alert": alert.pk})
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.silenced_until is None
    assert "Not silenced" in client.get(URL).content.decode()


def test_a_bad_silence_is_refused_with_a_message(operator, alert):
    client = client_for(operator)
    response = client.post(
        URL, {"action": "silence", "alert": alert.pk, "duration": "1y", "reason": "x"}, follow=True
    )
    assert "The alert was not silenced" in response.content.decode()
    alert.refresh_from_db()
    assert alert.silenced_until is None
    assert client.post(URL, {"action": "unsilence", "alert": "x"}).status_code == 400
    assert client.post(URL, {"action": "unsilence", "alert": 999999}).status_code == 404
    assert client.post(URL, {"action": "dance"}).status_code == 400


def test_silence_needs_the_run_permission(viewer, alert):
    response = viewer.post(
        URL, {"action": "silence", "alert": alert.pk, "duration": "1h", "reason": "x"}
    )
    assert response.status_code == 403
    alert.refresh_from_db()
    assert alert.silenced_until is None


def test_admin_index_links_system_health(viewer, make_user):
    page = viewer.get("/admin/").content.decode()
    assert f'<a href="{URL}">System health</a>' in page
    # Nothing to add or change: no add link, no other page.
    assert "/admin/mpai/health/add/" not in page
    assert viewer.get(f"{URL}add/").status_code in (302, 404)
    assert viewer.get(f"{URL}1/change/").status_code in (302, 404)
    other = client_for(make_user(is_staff=True)).get("/admin/").content.decode()
    assert "System health" not in other


# --- the charts ---------------------------------------------------------------------


def test_line_chart_is_an_accessible_escaped_svg():
    svg = charts.line_chart(
        title='Times <&> "quoted"',
        lines=[
            charts.Line("a<script>", [(0, 10.0), (10, 20.0), (20, None), (30, 5.0)]),
            charts.Line("b", [(0, 1500.0), (30, 900.0)]),
        ],
        x_range=(0, 30),
        x_ticks=[(0, "00:00"), (30, "<b>")],
        unit="ms",
    )
    assert svg.startswith('<svg class="mpai-chart" role="img" aria-labelledby=')
    assert 'viewBox="0 0 480 250" width="100%"' in svg
    assert "<title" in svg
    assert "Times &lt;&amp;&gt; &quot;quoted&quot;" in svg
    assert "<script>" not in svg
    assert "a&lt;script&gt;" in svg
    assert "&lt;b&gt;" in svg
    assert svg.count("<polyline") == 2  # a's first run and b
    assert svg.count("<circle") == 1  # a's point after the gap
    assert "1.5 s</text>" in svg  # y labels in the unit, seconds past 1000 ms
    assert "Latest: a&lt;script&gt; 5 ms; b 900 ms." in svg
    assert 'stroke-dasharray="7 4"' in svg  # the second series differs by dash too
    assert "style=" not in svg  # nothing a strict style-src refuses


def test_empty_chart_and_helpers():
    svg = charts.line_chart(title="Empty", lines=[], x_range=(0, 1), x_ticks=[], unit="fraction")
    assert "No data in this window." in svg
    assert charts.nice_ticks(0.37) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert charts.nice_ticks(0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert charts.nice_ticks(4000)[-1] == 4000
    assert charts.format_value(0.25, "fraction") == "25 %"
    assert charts.format_value(250, "ms") == "250 ms"
    assert charts.format_value(1500, "ms") == "1.5 s"
    assert charts.format_value(1.5 * 2**30, "bytes") == "1.5 GiB"
    assert charts.format_value(1200, "count") == "1.2k"
    with pytest.raises(ValueError, match="unknown unit"):
        charts.line_chart(title="x", lines=[], x_range=(0, 1), x_ticks=[], unit="parsecs")


def test_time_ticks_follow_the_local_time_zone():
    from datetime import datetime
    from zoneinfo import ZoneInfo

    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+5:30: local hours start at :30 UTC
    first = datetime(2026, 3, 1, 0, 10, tzinfo=kolkata).timestamp()
    with timezone.override(kolkata):
        ticks = charts.time_ticks(first, first + 24 * 3600, days=False)
        week = charts.time_ticks(first, first + 7 * 24 * 3600, days=True)
    assert [label for _, label in ticks] == ["04:00", "08:00", "12:00", "16:00", "20:00", "00:00"]
    assert datetime.fromtimestamp(ticks[0][0], kolkata).minute == 0
    assert [label for _, label in week][:2] == ["Mon 2", "Tue 3"]

    paris = ZoneInfo("Europe/Paris")  # 29 March 2026: 02:00 → 03:00
    first = datetime(2026, 3, 28, 23, 30, tzinfo=paris).timestamp()
    with timezone.override(paris):
        ticks = charts.time_ticks(first, first + 12 * 3600, days=False)
    assert [label for _, label in ticks] == ["00:00", "04:00", "08:00", "12:00"]
    assert ticks[1][0] - ticks[0][0] == 3 * 3600  # a short night


def test_the_usage_report_is_linked_for_those_who_may_read_it(make_user, snapshot):
    url = "/admin/mpai/health/"
    report = "/admin/mpai/usagereport/"
    without = client_for(grant(make_user(is_staff=True), "view_health")).get(url)
    assert report not in without.content.decode()
    both = client_for(grant(make_user(is_staff=True), "view_health", "view_usagereport"))
    page = both.get(url).content.decode()
    assert f'href="{report}"' in page
    assert both.get(report).status_code == 200
