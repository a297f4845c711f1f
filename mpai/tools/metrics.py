"""Per-tool figures of the last hour, kept in mpai's cache (group ``tool_metrics``).

:func:`record_tool_call`, a receiver of :data:`mpai.signals.tool_called`, counts each
call (``calls``; ``errors``: status ``"error"``, so a cancelled call is a call, not an
error) and its duration in a fixed-bucket histogram (:mod:`mpai.metrics.histogram`,
ms), per tool and per Unix minute, in this process's memory; a daemon thread writes
the minutes that changed to the cache, so the turn's thread never waits for it.
:func:`tool_summary` and :func:`tool_activity` read the last
:data:`WINDOW_MINUTES` minutes back, merged over every process.

Keys, under the group's prefix (:func:`mpai.chat.cache_groups.group_prefix`) and this
site's identity (:func:`mpai.chat.scoped_cache.scoped_key`, ``<site>:<key>``, as every
per-site entry of mpai), each living the group's lifetime
(``MPAI["CACHE_TIMEOUTS"]["tool_metrics"]``, 3600 s by default) from its last write:

- ``<site>:slots:<minute>``: how many process slots wrote figures in that minute (a
  counter; each process takes its slot with ``add`` and ``incr``, so processes never
  overwrite each other's figures);
- ``<site>:<minute>:<slot>``: one process's figures of one minute, ``{tool: {"calls":
  int, "errors": int, "buckets": {bucket index: count}}}``.

So two sites sharing one cache (without a ``KEY_PREFIX``) never mix their figures. The
site is the one of the thread that records a call (:func:`record_tool_call`) or reads
the figures; without a site identity (its database row unreadable, logged) nothing is
recorded and the window reads empty.

Nothing is recorded while ``MPAI["METRICS_ENABLED"]`` is off. A cache that fails
loses figures (logged), never a turn.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any, TypedDict

from mpai.chat import cache_groups, scoped_cache
from mpai.conf import mpai_settings
from mpai.metrics import histogram
from mpai.tools.registry import configured_tools

__all__ = [
    "WINDOW_MINUTES",
    "ToolActivity",
    "ToolFigures",
    "add_tool_call",
    "flush_tool_metrics",
    "record_tool_call",
    "tool_activity",
    "tool_summary",
]

logger = logging.getLogger("mpai.metrics")

#: Minutes :func:`tool_summary` covers (the current, partial minute included).
WINDOW_MINUTES = 60
GROUP = cache_groups.TOOL_METRICS
#: The name a call of no configured tool is counted under (as in the Prometheus metrics).
OTHER = "other"


class ToolFigures(TypedDict):
    """One tool over the window: ``calls`` and ``errors`` (counts), ``p50_ms`` and
    ``p95_ms`` (ms, within ``histogram.MAX_RELATIVE_ERROR``; None with no call)."""

    tool: str
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None


class ToolActivity(TypedDict):
    """The window as the health dashboard shows it.

    ``tools``: :class:`ToolFigures` per tool, most called first; ``per_minute``: calls
    of every tool in each minute of the window, oldest first (:data:`WINDOW_MINUTES`
    counts, the last one the current minute so far); ``calls`` and ``errors``: totals;
    ``rate_per_minute``: ``calls / WINDOW_MINUTES`` (executions per minute, mean);
    ``peak_per_minute``: the largest minute's count.
    """

    tools: list[ToolFigures]
    per_minute: list[int]
    calls: int
    errors: int
    rate_per_minute: float
    peak_per_minute: int


_lock = threading.Lock()  # guards the figures below
_write_lock = threading.Lock()  # one writer at a time: a newer snapshot is never overwritten
_pid: int | None = None
_minutes: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}  # (site, minute) -> tool -> figures
_dirty: set[tuple[str, int]] = set()
_slots: dict[tuple[str, int], int] = {}  # (site's key prefix, minute) -> this process's slot
_wake = threading.Event()
_writer: threading.Thread | None = None


def record_tool_call(*, name: str, status: str, duration_ms: float, **kwargs: Any) -> None:
    """Receiver of ``tool_called``: count the call (see :func:`add_tool_call`), unless
    ``MPAI["METRICS_ENABLED"]`` is off. A name that is no configured tool (the model
    may call any) counts as :data:`OTHER`, so the keys stay bounded. Never blocks on
    the cache, never raises."""
    if not mpai_settings.METRICS_ENABLED:
        return
    try:
        site = _site()
        if site is not None:
            tool = name if name in configured_tools() else OTHER
            add_tool_call(tool, status, duration_ms, site=site)
    except Exception:
        logger.exception("mpai tool metrics: could not count a call of %r", name)


def add_tool_call(
    name: str,
    status: str,
    duration_ms: float,
    *,
    now: float | None = None,
    write: bool = True,
    site: str | None = None,
) -> None:
    """Count one call of tool ``name`` that ended with ``status`` after ``duration_ms``
    (ms) at ``now`` (Unix s, default ``time.time()``) on ``site`` (a site identity;
    None: this site's, :func:`mpai.chat.scoped_cache.current_site`, and nothing is
    counted without one); with ``write``, wake the writer thread (else the figures wait
    for :func:`flush_tool_metrics`). The site identity is read from the database on its
    first use in the process; never raises for a missing one (logged).
    """
    if site is None:
        site = _site()
        if site is None:
            return
    minute = int((time.time() if now is None else now) // 60)
    with _lock:
        _own_process()
        figures = _minutes.setdefault((site, minute), {}).setdefault(
            name, {"calls": 0, "errors": 0, "buckets": {}}
        )
        figures["calls"] += 1
        if status == "error":
            figures["errors"] += 1
        index = histogram.bucket_index(float(duration_ms))
        figures["buckets"][index] = figures["buckets"].get(index, 0) + 1
        _dirty.add((site, minute))
    if write:
        _start_writer()
        _wake.set()


def flush_tool_metrics() -> int:
    """Write this process's changed minutes to the cache now, in the caller's thread;
    return how many (site, minute) entries were written. Figures that fail to write are
    logged and dropped from the cache (kept in memory, written again with the minute's
    next call). Each site's figures go under that site's keys (no database access).
    """
    with _write_lock:
        with _lock:
            _own_process()
            pending = {key: copy.deepcopy(_minutes[key]) for key in _dirty}
            _dirty.clear()
            oldest = int(time.time() // 60) - WINDOW_MINUTES
            for key in [k for k in _minutes if k[1] < oldest and k not in pending]:
                del _minutes[key]
        if not pending:
            return 0
        cache = cache_groups.get_cache()
        group = cache_groups.group_prefix(GROUP)
        timeout = cache_groups.group_timeout(GROUP)
        for (site, minute), figures in sorted(pending.items()):
            prefix = _site_prefix(group, site)
            slot = _slot_of(cache, prefix, minute, timeout)
            cache.set(f"{prefix}{minute}:{slot}", figures, timeout)
        return len(pending)


def tool_activity(*, now: float | None = None) -> ToolActivity:
    """The last :data:`WINDOW_MINUTES` minutes up to ``now`` (Unix s), every process's
    figures of this site merged: two ``get_many`` of the cache. See :class:`ToolActivity`
    (all zero, no tools, without a site identity)."""
    last = int((time.time() if now is None else now) // 60)
    minutes = range(last - WINDOW_MINUTES + 1, last + 1)
    site = _site()
    if site is None:
        return _activity({}, dict.fromkeys(minutes, 0))
    cache = cache_groups.get_cache()
    prefix = _site_prefix(cache_groups.group_prefix(GROUP), site)
    counters = cache.get_many([f"{prefix}slots:{minute}" for minute in minutes])
    keys: dict[str, int] = {}
    for minute in minutes:
        slots = int(counters.get(f"{prefix}slots:{minute}") or 0)
        for slot in range(1, slots + 1):
            keys[f"{prefix}{minute}:{slot}"] = minute
    entries = cache.get_many(list(keys)) if keys else {}
    per_minute = dict.fromkeys(minutes, 0)
    merged: dict[str, dict[str, Any]] = {}
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        for tool, figures in entry.items():
            total = merged.setdefault(str(tool), {"calls": 0, "errors": 0, "buckets": {}})
            calls = int(figures.get("calls", 0))
            total["calls"] += calls
            total["errors"] += int(figures.get("errors", 0))
            for index, count in (figures.get("buckets") or {}).items():
                total["buckets"][index] = total["buckets"].get(index, 0) + int(count)
            per_minute[keys[key]] += calls
    return _activity(merged, per_minute)


def _activity(merged: dict[str, dict[str, Any]], per_minute: dict[int, int]) -> ToolActivity:
    """The :class:`ToolActivity` of merged per-tool figures and per-minute call counts."""
    tools: list[ToolFigures] = []
    for tool, total in merged.items():
        counts = histogram.dense(total["buckets"])
        tools.append(
            {
                "tool": tool,
                "calls": total["calls"],
                "errors": total["errors"],
                "p50_ms": histogram.percentile(counts, 0.5),
                "p95_ms": histogram.percentile(counts, 0.95),
            }
        )
    tools.sort(key=lambda row: (-row["calls"], row["tool"]))
    counts_by_minute = list(per_minute.values())  # oldest first
    calls = sum(counts_by_minute)
    return {
        "tools": tools,
        "per_minute": counts_by_minute,
        "calls": calls,
        "errors": sum(row["errors"] for row in tools),
        "rate_per_minute": calls / WINDOW_MINUTES,
        "peak_per_minute": max(counts_by_minute, default=0),
    }


def tool_summary(*, now: float | None = None) -> list[ToolFigures]:
    """Per tool over the last hour: ``[{"tool", "calls", "errors", "p50_ms",
    "p95_ms"}]`` (ms), most called first (:func:`tool_activity`'s ``tools``)."""
    return tool_activity(now=now)["tools"]


def _site() -> str | None:
    """This site's identity, or None when it cannot be read (logged), e.g. from a
    context without database access."""
    try:
        return scoped_cache.current_site()  # None (logged) on a database error
    except Exception:  # e.g. SynchronousOnlyOperation in an event loop
        logger.warning("mpai tool metrics: no site identity, figures not kept", exc_info=True)
        return None


def _site_prefix(group_prefix: str, site: str) -> str:
    """The prefix of ``site``'s keys in the group: ``<group prefix><site>:``."""
    return group_prefix + scoped_cache.scoped_key("", site)


def _slot_of(cache: Any, prefix: str, minute: int, timeout: float | None) -> int:
    """This process's slot for ``minute`` under ``prefix`` (taken on first use)."""
    slot = _slots.get((prefix, minute))
    if slot is None:
        key = f"{prefix}slots:{minute}"
        cache.add(key, 0, timeout)
        try:
            slot = int(cache.incr(key))
        except ValueError:  # the counter is gone (evicted, or a cache that keeps nothing)
            cache.set(key, 1, timeout)
            slot = 1
        _slots[(prefix, minute)] = slot
        for old in [k for k in _slots if k[1] < minute - WINDOW_MINUTES]:
            del _slots[old]
    return slot


def _own_process() -> None:
    """Forget figures inherited across a fork (another process's); under ``_lock``."""
    global _pid, _writer, _wake
    pid = os.getpid()
    if _pid != pid:
        _pid = pid
        _minutes.clear()
        _dirty.clear()
        _slots.clear()
        _writer, _wake = None, threading.Event()


def _start_writer() -> None:
    global _writer
    if _writer is not None and _writer.is_alive():
        return
    with _lock:
        if _writer is None or not _writer.is_alive():
            _writer = threading.Thread(
                target=_write_forever, args=(_wake,), name="mpai-tool-metrics", daemon=True
            )
            _writer.start()


def _write_forever(wake: threading.Event) -> None:
    while True:
        wake.wait()
        wake.clear()
        try:
            flush_tool_metrics()
        except Exception:
            logger.exception("mpai tool metrics: writing to the cache failed")


def _reset() -> None:
    """Forget this process's figures and slots (tests)."""
    with _write_lock, _lock:
        _minutes.clear()
        _dirty.clear()
        _slots.clear()
