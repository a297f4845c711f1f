"""Per-tool figures of the last hour in mpai's cache (mpai.tools.metrics), kept per site,
and the slow tool calls of the slow-operation log (mpai.chat.slowlog)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test.utils import override_settings

from mpai import signals
from mpai.chat import cache_groups
from mpai.chat.slowlog import log_slow_tool_call
from mpai.metrics import histogram
from mpai.models import SiteIdentity
from mpai.site_identity import forget_site_identity, site_identity
from mpai.tools import metrics, tool
from tests.waiting import wait_until

# The figures are kept per site: the site identity is a database row.
pytestmark = pytest.mark.django_db

NOW = 1_800_000_000.0  # a Unix time, the start of a minute


@tool
def lookup(user: Any, query: str = "") -> dict[str, Any]:
    """Look something up."""
    return {}


@tool
def other_tool(user: Any) -> dict[str, Any]:
    """Do another thing."""
    return {}


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    """No figures of other tests: a new group version and no process state; no site
    identity of this test's (rolled back) rows left known to the process."""
    metrics._reset()
    cache_groups.delete_group(metrics.GROUP)
    yield
    metrics._reset()
    forget_site_identity()


def send(name: str, status: str = "ok", duration_ms: float = 5.0, **extra: Any) -> None:
    signals.tool_called.send_robust(
        sender=None,
        trace=SimpleNamespace(request_id="req-1"),
        user=None,
        conversation=None,
        name=name,
        call_id="call_1",
        status=status,
        duration_ms=duration_ms,
        error_code=None if status == "ok" else "timeout",
        **extra,
    )


def by_tool(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["tool"]: row for row in rows}


def test_counts_errors_and_percentiles_per_tool() -> None:
    for ms in range(1, 101):  # 1..100 ms
        metrics.add_tool_call("lookup", "ok", float(ms), now=NOW + 5, write=False)
    metrics.add_tool_call("lookup", "error", 2000.0, now=NOW + 6, write=False)
    metrics.add_tool_call("other_tool", "cancelled", 3.0, now=NOW + 7, write=False)
    assert metrics.flush_tool_metrics() == 1
    rows = metrics.tool_summary(now=NOW + 30)
    assert [row["tool"] for row in rows] == ["lookup", "other_tool"]  # most called first
    lookup_row, other = rows
    assert set(lookup_row) == {"tool", "calls", "errors", "p50_ms", "p95_ms"}
    assert (lookup_row["calls"], lookup_row["errors"]) == (101, 1)
    bound = 1 + histogram.MAX_RELATIVE_ERROR
    assert 51 / bound <= lookup_row["p50_ms"] <= 51 * bound
    assert 96 / bound <= lookup_row["p95_ms"] <= 96 * bound
    assert (other["calls"], other["errors"]) == (1, 0)  # cancelled: a call, not an error


def test_only_the_last_hour_counts_and_the_rate_is_per_minute() -> None:
    metrics.add_tool_call("lookup", "ok", 1.0, now=NOW - 3600, write=False)  # 61 minutes ago
    for second in range(0, 120, 10):  # 12 calls over two minutes
        metrics.add_tool_call("lookup", "ok", 1.0, now=NOW - 120 + second, write=False)
    metrics.flush_tool_metrics()
    activity = metrics.tool_activity(now=NOW)
    assert activity["calls"] == 12
    assert len(activity["per_minute"]) == metrics.WINDOW_MINUTES
    assert activity["per_minute"][-3:] == [6, 6, 0]
    assert activity["rate_per_minute"] == pytest.approx(12 / 60)
    assert activity["peak_per_minute"] == 6
    assert metrics.tool_summary(now=NOW + 3600) == []  # an hour later: nothing


def test_processes_write_their_own_slots_and_are_merged() -> None:
    metrics.add_tool_call("lookup", "ok", 1.0, now=NOW, write=False)
    metrics.flush_tool_metrics()
    metrics._reset()  # as another process: its own figures, its own slot
    metrics.add_tool_call("lookup", "error", 1.0, now=NOW + 1, write=False)
    metrics.add_tool_call("lookup", "ok", 1.0, now=NOW + 2, write=False)
    metrics.flush_tool_metrics()
    prefix = cache_groups.group_prefix(metrics.GROUP) + site_identity() + ":"
    minute = int(NOW // 60)
    assert cache.get(f"{prefix}slots:{minute}") == 2
    assert by_tool(metrics.tool_summary(now=NOW))["lookup"]["calls"] == 3
    assert by_tool(metrics.tool_summary(now=NOW))["lookup"]["errors"] == 1


def test_entries_live_the_groups_hour() -> None:
    metrics.add_tool_call("lookup", "ok", 1.0, write=False)
    metrics.flush_tool_metrics()
    prefix = cache_groups.group_prefix(metrics.GROUP) + site_identity() + ":"
    minute = int(time.time() // 60)
    assert cache_groups.group_timeout(metrics.GROUP) == 3600
    for key in (f"{prefix}slots:{minute}", f"{prefix}{minute}:1"):
        assert 3590 <= cache.ttl(key) <= 3600, key


def test_the_receiver_counts_configured_tools_while_metrics_are_on() -> None:
    options = {**settings.MPAI, "TOOLS": [lookup, other_tool]}
    with override_settings(MPAI={**options, "METRICS_ENABLED": False}):
        send("lookup")
    assert metrics.flush_tool_metrics() == 0
    with override_settings(MPAI={**options, "METRICS_ENABLED": True}):
        send("lookup")
        send("lookup", status="error", duration_ms=40.0)
        send("made_up_name", status="error")  # the model may call any name
        # The writer thread puts them in the cache; the turn's thread never waits.
        rows = wait_until(
            lambda: (
                (found := by_tool(metrics.tool_summary())).get("lookup", {}).get("calls") == 2
                and found
            ),
            timeout=5,
            what="the writer thread's figures",
        )
    assert (rows["lookup"]["calls"], rows["lookup"]["errors"]) == (2, 1)
    assert rows[metrics.OTHER]["calls"] == 1
    assert "made_up_name" not in rows


# --- sites sharing one cache -------------------------------------------------------------


def become_site(identity: str) -> None:
    """Act as the site whose identity is ``identity`` (its row, as another database has)."""
    SiteIdentity.objects.update_or_create(pk=1, defaults={"uuid": uuid.UUID(identity)})
    forget_site_identity()
    assert site_identity() == identity


def test_two_sites_sharing_a_cache_keep_their_own_figures() -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    become_site(first)
    for _ in range(3):
        metrics.add_tool_call("lookup", "ok", 1.0, now=NOW, write=False)
    metrics.flush_tool_metrics()
    metrics._reset()  # the second site's process: its own memory, the same cache
    become_site(second)
    metrics.add_tool_call("lookup", "error", 1.0, now=NOW + 1, write=False)
    metrics.add_tool_call("other_tool", "ok", 1.0, now=NOW + 2, write=False)
    metrics.flush_tool_metrics()

    second_rows = by_tool(metrics.tool_summary(now=NOW + 30))
    assert {name: (r["calls"], r["errors"]) for name, r in second_rows.items()} == {
        "lookup": (1, 1),
        "other_tool": (1, 0),
    }
    assert metrics.tool_activity(now=NOW + 30)["calls"] == 2
    become_site(first)
    first_rows = by_tool(metrics.tool_summary(now=NOW + 30))
    assert {name: (r["calls"], r["errors"]) for name, r in first_rows.items()} == {"lookup": (3, 0)}
    # Each site counts its own process slots: both processes took slot 1 of the minute.
    group = cache_groups.group_prefix(metrics.GROUP)
    minute = int(NOW // 60)
    assert cache.get(f"{group}{first}:slots:{minute}") == 1
    assert cache.get(f"{group}{second}:slots:{minute}") == 1
    assert cache.get(f"{group}slots:{minute}") is None  # nothing under an unscoped key


def test_one_process_serving_two_sites_writes_each_sites_figures_to_its_keys() -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    metrics.add_tool_call("lookup", "ok", 1.0, now=NOW, write=False, site=first)
    metrics.add_tool_call("lookup", "ok", 1.0, now=NOW, write=False, site=second)
    metrics.add_tool_call("lookup", "ok", 1.0, now=NOW, write=False, site=second)
    assert metrics.flush_tool_metrics() == 2  # one (site, minute) entry each
    become_site(first)
    assert by_tool(metrics.tool_summary(now=NOW))["lookup"]["calls"] == 1
    become_site(second)
    assert by_tool(metrics.tool_summary(now=NOW))["lookup"]["calls"] == 2


def test_unscoped_figures_in_the_cache_are_never_read() -> None:
    # What a version without site keys, or another program, left under the bare keys.
    group = cache_groups.group_prefix(metrics.GROUP)
    minute = int(NOW // 60)
    cache.set(f"{group}slots:{minute}", 1)
    cache.set(f"{group}{minute}:1", {"lookup": {"calls": 7, "errors": 0, "buckets": {}}})
    assert metrics.tool_summary(now=NOW) == []


# --- slow tool calls in the slow-operation log -------------------------------------------


@pytest.mark.parametrize(
    ("duration_ms", "level"),
    [(10.0, logging.DEBUG), (1500.0, logging.INFO), (6000.0, logging.WARNING)],
)
def test_a_tool_call_is_logged_at_the_level_its_duration_earns(
    caplog: pytest.LogCaptureFixture, duration_ms: float, level: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="mpai.slow")
    send("lookup", duration_ms=duration_ms)
    records = [r for r in caplog.records if r.name == "mpai.slow"]
    assert [r.levelno for r in records] == [level]
    record = records[0]
    assert record.getMessage() == (
        f"mpai tool lookup took {duration_ms / 1000:.3f} s (ok, request req-1)"
    )
    assert record.tool == "lookup"  # type: ignore[attr-defined]
    assert record.duration_s == duration_ms / 1000  # type: ignore[attr-defined]


def test_the_tool_thresholds_are_the_slow_log_settings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mpai.slow")
    options = {**settings.MPAI, "SLOW_LOG_INFO_S": 0.1, "SLOW_LOG_WARNING_S": 0.2}
    with override_settings(MPAI=options):
        log_slow_tool_call(name="lookup", duration_ms=150.0, status="error")
        log_slow_tool_call(name="lookup", duration_ms=250.0)
        log_slow_tool_call(name="lookup", duration_ms=50.0)
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "mpai.slow"] == [
        (logging.INFO, "mpai tool lookup took 0.150 s (error, request None)"),
        (logging.WARNING, "mpai tool lookup took 0.250 s (?, request None)"),
    ]
