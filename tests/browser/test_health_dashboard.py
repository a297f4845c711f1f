"""The admin's system-health dashboard in headless Chromium, against the demo in uvicorn.

Same stack as test_chat_page.py (its fixtures): a staff member with the health
permissions signs in at /admin/login/, sees every check of the last run and the charts
(turn figures written to the server's metrics Redis, memory from earlier runs), presses
"Run checks now" and sees the new run, under the demo's Content-Security-Policy.
Screenshots at desktop and phone width are saved as ``/tmp/mpai-browser-health-*.png``
(the paths are printed).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import Permission
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from mpai.health.models import HealthAlert, HealthSnapshot
from mpai.metrics import storage
from mpai.metrics.record import STAGES, TurnRecord
from tests.asgi_server import AsgiServer
from tests.browser import test_chat_page as chat_page

pytestmark = pytest.mark.django_db(transaction=True)

# The fixtures of the chat page's tests, by assignment (pytest finds them here).
browser = chat_page.browser
chat_server = chat_page.chat_server
member = chat_page.member

URL = "/admin/mpai/health/"
RECORD_PROBLEMS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""
EARLIER_RESULTS = [
    {"name": "database", "status": "ok", "message": "PostgreSQL answers", "duration_ms": 2.0},
    {"name": "memory", "status": "ok", "message": "resident", "duration_ms": 0.5},
]


@pytest.fixture
def server_metrics(redis_server) -> Iterator[None]:
    """Turns of the last day and week in the server's metrics store (its rate-limit
    Redis, database 0), removed afterwards."""
    client = redis.Redis.from_url(f"{redis_server.url}/0")
    rng = random.Random(13)
    now = time.time()
    for _ in range(400):
        ended = now - rng.uniform(0, 7 * 24 * 3600) * rng.choice([1, 0.15])
        total = rng.lognormvariate(6.5, 0.6)
        storage.record_redis(
            client,
            TurnRecord(
                timings_ms={
                    "context": total * 0.05,
                    "first_token": total * 0.3,
                    "generation": total * 0.6,
                    "total": total,
                }
                | ({"api_wait": total * 0.25} if rng.random() < 0.5 else {}),
                outcome=rng.choice(["complete"] * 12 + ["cancelled", "provider_timeout"]),
                model="fake-model",
                cached=rng.random() < 0.3,
                replayed=False,
                input_tokens=40,
                output_tokens=12,
                ended_at=ended,
            ),
        )
    assert set(STAGES) >= {"context", "first_token", "generation", "total", "api_wait"}
    yield
    keys = list(client.scan_iter("mpai:metrics:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def earlier_runs() -> list[HealthSnapshot]:
    """Six runs over the last day, their memory check reporting resident bytes."""
    runs = []
    for hours_ago in (22, 18, 14, 10, 6, 2):
        results = [dict(r) for r in EARLIER_RESULTS]
        results[1]["details"] = {"rss_bytes": (150 + 4 * (22 - hours_ago)) * 2**20}
        run = HealthSnapshot.objects.create(
            status="ok", duration_ms=12.0, results=results, trigger="schedule"
        )
        HealthSnapshot.objects.filter(pk=run.pk).update(
            created_at=timezone.now() - timedelta(hours=hours_ago)
        )
        runs.append(run)
    return runs


@pytest.fixture
def firing_alert() -> HealthAlert:
    now = timezone.now()
    return HealthAlert.objects.create(
        check_name="backups",
        severity="warning",
        state="firing",
        message="last backup 30 h ago",
        first_seen=now - timedelta(hours=3),
        last_seen=now,
        fired_at=now - timedelta(hours=2),
        count=4,
    )


@pytest.fixture
def page(browser: Browser, chat_server: AsgiServer, request) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(chat_page.DEADLINE_MS)
    context.add_init_script(RECORD_PROBLEMS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert errors == []
        if request.session.testsfailed:
            shot = screenshot(page, f"failed-{request.node.name}")
            print(f"browser artifacts: {shot}; server log: {chat_server.log_path}")
    finally:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    path = chat_page.ARTIFACTS / f"mpai-browser-health-{name}-{os.getpid()}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_staff_sees_the_checks_and_charts_and_runs_the_checks(
    page, chat_server, member, server_metrics, earlier_runs, firing_alert
):
    member.user.is_staff = True
    member.user.save(update_fields=["is_staff"])
    member.user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="mpai", codename__in=["view_health", "run_health_checks"]
        )
    )
    page.goto(f"{chat_server.http_url}{URL}")
    expect(page).to_have_url(f"{chat_server.http_url}/admin/login/?next={URL}")
    page.get_by_label("Username").fill(member.username)
    page.get_by_label("Password").fill(member.password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{chat_server.http_url}{URL}")

    expect(page.get_by_role("heading", name="System health")).to_be_visible()
    checks = page.locator("#mpai-health-checks tbody th[scope=row]")
    expect(checks).to_have_text([r["name"] for r in EARLIER_RESULTS])
    charts = page.locator("svg.mpai-chart")
    expect(charts).to_have_count(6)
    for index in range(6):
        expect(charts.nth(index)).to_be_visible()
    assert page.locator("svg.mpai-chart polyline").count() >= 6  # the charts have lines
    expect(page.get_by_role("img", name="Process memory (resident)")).to_be_visible()
    rows = page.locator("#mpai-health-snapshots tbody tr")
    expect(rows).to_have_count(6)
    print(f"\nhealth dashboard (desktop): {screenshot(page, 'desktop')}")

    # Silence the open alert for 24 hours, with a reason.
    alert_row = page.locator(f"#mpai-health-open-alerts tr[data-alert='{firing_alert.pk}']")
    expect(alert_row).to_contain_text("Not silenced")
    alert_row.get_by_label("For").select_option("24h")
    alert_row.get_by_label("Reason").fill("Backup host moved <today>")
    alert_row.get_by_role("button", name="Silence").click()
    expect(page.locator("ul.messagelist li.success")).to_contain_text("silenced for 24 hours")
    expect(alert_row).to_contain_text(f"by {member.username}: Backup host moved <today>")
    expect(alert_row.get_by_role("button", name="Unsilence")).to_be_visible()
    firing_alert.refresh_from_db()
    assert firing_alert.silence_reason == "Backup host moved <today>"

    page.get_by_role("button", name="Run checks now").click()
    expect(page.locator("ul.messagelist li.success")).to_contain_text("Checks run:")
    expect(page).to_have_url(f"{chat_server.http_url}{URL}?window=24h")
    expect(rows).to_have_count(7)
    newest = HealthSnapshot.objects.first()
    assert newest is not None
    assert newest.trigger == "manual"
    expect(rows.first).to_contain_text("manual")
    expect(checks).to_have_text([r["name"] for r in newest.results])
    expect(page.locator("#mpai-health-checks .mpai-badge")).to_have_count(len(newest.results))
    print(f"health dashboard after a run (desktop): {screenshot(page, 'desktop-after-run')}")

    page.get_by_role("link", name="Last 7 days").click()
    expect(page.locator(".mpai-health-windows [aria-current=page]")).to_have_text("Last 7 days")
    expect(charts).to_have_count(6)
    print(f"health dashboard, 7 days (desktop): {screenshot(page, 'desktop-week')}")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{chat_server.http_url}{URL}")
    expect(charts).to_have_count(6)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    box = charts.first.bounding_box()
    assert box is not None
    assert box["width"] <= 390
    print(f"health dashboard (phone): {screenshot(page, 'phone')}")
    # Close-ups at phone width: the checks, a chart, the open alerts (if any).
    for name, part in (
        ("checks", page.locator(".mpai-health-summary")),
        ("chart", page.locator("figure.mpai-health-chart").first),
        ("alerts", page.locator("#mpai-health-alerts-title").locator("..")),
    ):
        path = chat_page.ARTIFACTS / f"mpai-browser-health-phone-{name}-{os.getpid()}.png"
        part.screenshot(path=str(path))
        print(f"health dashboard (phone, {name}): {path}")
    assert page.evaluate("window.cspViolations") == []
