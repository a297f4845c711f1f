"""The tools section of the system-health dashboard: the last hour's per-tool figures
(mpai.tools.metrics) and the tool executions per minute."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from mpai.chat import cache_groups
from mpai.health import dashboard
from mpai.tools import metrics
from tests.health.test_dashboard import URL, client_for, grant

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    metrics._reset()
    cache_groups.delete_group(metrics.GROUP)
    yield
    metrics._reset()


@pytest.fixture
def viewer(make_user):
    return client_for(grant(make_user(is_staff=True), "view_health"))


def row_of(page: str, tool: str) -> list[str]:
    match = re.search(rf'<th scope="row" class="mpai-tool-name">{tool}</th>(.*?)</tr>', page, re.S)
    assert match, f"no row for {tool}"
    return [cell.strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)]


def test_the_page_shows_each_tools_calls_errors_and_percentiles(viewer):
    now = time.time()
    for _ in range(9):
        metrics.add_tool_call("list_plans", "ok", 20.0, now=now, write=False)
    metrics.add_tool_call("list_plans", "error", 20.0, now=now, write=False)
    for _ in range(2):
        metrics.add_tool_call("search_help_articles", "ok", 300.0, now=now, write=False)
    metrics.flush_tool_metrics()

    response = viewer.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Tools (last hour)" in page
    assert 'id="mpai-health-tools"' in page
    # 20 ms and 300 ms come back as their buckets' midpoints (within 9.05 %).
    calls, errors, p50, p95 = row_of(page, "list_plans")
    assert (calls, errors) == ("10", "1")
    assert re.fullmatch(r"\d+\.\d ms", p50)
    assert 18.2 <= float(p50.split()[0]) <= 21.9
    assert p95 == p50
    calls, errors, p50, _ = row_of(page, "search_help_articles")
    assert (calls, errors) == ("2", "0")
    assert 272.0 <= float(p50.split()[0]) <= 328.0
    # Most called first; 12 calls in the hour = 0.2 per minute.
    assert page.index("list_plans") < page.index("search_help_articles")
    rate = re.search(r'id="mpai-health-tool-rate">(.*?)</p>', page, re.S)
    assert rate
    text = " ".join(rate.group(1).split())
    assert "Tool executions per minute: <strong>0.2</strong>" in text
    assert "busiest minute 12;" in text
    assert "12 calls, 1 error)" in text


def test_no_tool_call_in_the_last_hour(viewer):
    page = viewer.get(URL).content.decode()
    assert "No tool was called in the last hour." in page
    assert "Tool executions per minute: <strong>0.0</strong>" in page


def test_an_unreadable_cache_does_not_break_the_page(viewer, monkeypatch):
    def broken(**kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(metrics, "tool_activity", broken)
    assert dashboard.tool_section() is None
    response = viewer.get(URL)
    assert response.status_code == 200
    assert "The tool figures could not be read from the cache." in response.content.decode()
