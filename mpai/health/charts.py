"""Server-side SVG line charts for the system-health dashboard: no script, nothing loaded.

:func:`line_chart` draws any number of :class:`Line` over a time axis (Unix seconds)
as one inline ``<svg>``: a y axis with labels in the chart's unit, x labels (hours of
the day, or days), a legend, and a ``<title>``/``<desc>`` read by screen readers
(``role="img"``). The drawing scales to its container (``viewBox``, ``width="100%"``),
so it stays legible at phone width. Series differ by colour *and* dash pattern. Colours
of the axes and text come from ``mpai/health.css`` (classes), those of the series from
presentation attributes, so a strict ``style-src 'self'`` policy allows the markup.

The other functions build the dashboard's charts from :func:`mpai.metrics.series.series`
points and from health snapshots.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

#: Units :func:`format_value` knows: durations, fractions shown as %, counts, bytes.
UNITS = ("ms", "fraction", "count", "bytes")

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
#: Dash patterns paired with the colours, so no series is told apart by colour alone.
DASHES = ("", "7 4", "2 3", "9 3 2 3", "4 2", "1 2")

WIDTH, HEIGHT = 480, 250
LEFT, RIGHT, BOTTOM = 64, 14, 30
LEGEND_ROW = 20
#: Font size (viewBox units) of the labels; health.css raises it at phone width, so the
#: legend is laid out for :data:`LEGEND_FONT_PX`.
FONT_PX = 12
LEGEND_FONT_PX = 14

_ids = itertools.count(1)


@dataclass(frozen=True)
class Line:
    """One series: ``label`` for the legend, ``points`` as (x in Unix s, y or None);
    a None y is a gap in the line."""

    label: str
    points: Sequence[tuple[float, float | None]]


def format_value(value: float, unit: str) -> str:
    """``value`` for a label: ``ms`` as "250 ms" / "1.5 s", ``fraction`` (0..1) as
    "25 %", ``bytes`` as "512 MiB" / "1.5 GiB", ``count`` as "120" / "1.2k"."""
    if unit == "ms":
        return f"{value:.3g} ms" if value < 1000 else f"{value / 1000:.3g} s"
    if unit == "fraction":
        return f"{value * 100:.3g} %"
    if unit == "bytes":
        for factor, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= factor:
                return f"{value / factor:.3g} {name}"
        return f"{value:.3g} B"
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def nice_ticks(top: float, intervals: int = 4) -> list[float]:
    """Return ``intervals + 1``-ish evenly spaced round tick values from 0 to at least
    ``top`` (steps of 1, 2, 2.5 or 5 × 10ⁿ); ``[0, 1]`` scaled for ``top <= 0``."""
    if not top > 0 or not math.isfinite(top):
        top = 1.0
    raw = top / intervals
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    count = max(1, math.ceil(top / step - 1e-9))
    return [round(step * i, 12) for i in range(count + 1)]


def _ticks_for(top: float, unit: str) -> list[float]:
    """:func:`nice_ticks` in the unit the labels show: bytes in steps round in KiB,
    MiB or GiB, durations past a second round in seconds."""
    scale = 1.0
    if unit == "bytes":
        scale = next((f for f in (1 << 30, 1 << 20, 1 << 10) if top >= f), 1.0)
    elif unit == "ms" and top >= 1000:
        scale = 1000.0
    return [tick * scale for tick in nice_ticks(top / scale)]


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _legend_rows(labels: Sequence[str], width: float) -> list[list[tuple[int, float]]]:
    """Lay the legend out in rows: lists of (line index, x offset)."""
    rows: list[list[tuple[int, float]]] = [[]]
    x = 0.0
    for index, label in enumerate(labels):
        item = 30 + 0.6 * LEGEND_FONT_PX * len(label) + 14
        if rows[-1] and x + item > width:
            rows.append([])
            x = 0.0
        rows[-1].append((index, x))
        x += item
    return rows


def line_chart(
    *,
    title: str,
    lines: Sequence[Line],
    x_range: tuple[float, float],
    x_ticks: Sequence[tuple[float, str]],
    unit: str,
    empty_text: str = "No data in this window.",
) -> SafeString:
    """Return an inline ``<svg>`` line chart (``role="img"``, titled ``title``).

    ``x_range`` is (first, last) Unix s of the axis; ``x_ticks`` (Unix s, label) pairs
    within it; ``unit`` one of :data:`UNITS` (the y axis starts at 0). Every label is
    HTML-escaped; the result is safe to put in a template as is. With no y value at all
    the axes are drawn with ``empty_text`` in the middle.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; use one of {', '.join(UNITS)}")
    chart_id = f"mpai-chart-{next(_ids)}"
    plot_width = WIDTH - LEFT - RIGHT
    legend = _legend_rows([line.label for line in lines], plot_width)
    top = 10 + LEGEND_ROW * len(legend) + 6
    plot_height = HEIGHT - top - BOTTOM
    values = [y for line in lines for _, y in line.points if y is not None]
    ticks = _ticks_for(max(values, default=0.0), unit)
    y_top = ticks[-1]
    x0, x1 = x_range
    span = (x1 - x0) or 1.0

    def sx(x: float) -> str:
        return _number(LEFT + (x - x0) / span * plot_width)

    def sy(y: float) -> str:
        return _number(top + plot_height - (y / y_top) * plot_height)

    latest = []
    for line in lines:
        last = next((y for _, y in reversed(line.points) if y is not None), None)
        if last is not None:
            latest.append(f"{line.label} {format_value(last, unit)}")
    desc = ("Latest: " + "; ".join(latest) + ".") if latest else empty_text

    parts = [
        f'<svg class="mpai-chart" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'font-size="{FONT_PX}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>',
    ]
    # Legend.
    for row_number, row in enumerate(legend):
        y = 10 + LEGEND_ROW * row_number + LEGEND_ROW / 2
        for index, offset in row:
            x = LEFT + offset
            colour, dash = COLOURS[index % len(COLOURS)], DASHES[index % len(DASHES)]
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            parts.append(
                f'<line x1="{_number(x)}" y1="{_number(y)}" x2="{_number(x + 24)}" '
                f'y2="{_number(y)}" stroke="{colour}" stroke-width="2.5"{dash_attr}/>'
                f'<text class="mpai-chart-legend" x="{_number(x + 30)}" y="{_number(y + 4)}">'
                f"{escape(lines[index].label)}</text>"
            )
    # Grid and y labels.
    for tick in ticks:
        tick_y = sy(tick)
        parts.append(
            f'<line class="mpai-chart-grid" x1="{LEFT}" y1="{tick_y}" x2="{WIDTH - RIGHT}" '
            f'y2="{tick_y}"/>'
            f'<text class="mpai-chart-label" x="{LEFT - 6}" y="{_number(float(tick_y) + 4)}" '
            f'text-anchor="end">{escape(format_value(tick, unit))}</text>'
        )
    # X ticks and labels.
    baseline = _number(top + plot_height)
    for x, label in x_ticks:
        if not x0 <= x <= x1:
            continue
        px = sx(x)
        parts.append(
            f'<line class="mpai-chart-axis" x1="{px}" y1="{baseline}" x2="{px}" '
            f'y2="{_number(top + plot_height + 4)}"/>'
            f'<text class="mpai-chart-label" x="{px}" y="{_number(top + plot_height + 18)}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(
        f'<line class="mpai-chart-axis" x1="{LEFT}" y1="{baseline}" x2="{WIDTH - RIGHT}" '
        f'y2="{baseline}"/>'
        f'<line class="mpai-chart-axis" x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{baseline}"/>'
    )
    # Series.
    for index, line in enumerate(lines):
        colour, dash = COLOURS[index % len(COLOURS)], DASHES[index % len(DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for segment in _segments(line.points):
            if len(segment) == 1:
                ((x, y),) = segment
                parts.append(f'<circle cx="{sx(x)}" cy="{sy(y)}" r="2.5" fill="{colour}"/>')
            else:
                coords = " ".join(f"{sx(x)},{sy(y)}" for x, y in segment)
                parts.append(
                    f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                    f'stroke-width="2" stroke-linejoin="round"{dash_attr}/>'
                )
    if not values:
        parts.append(
            f'<text class="mpai-chart-empty" x="{_number(LEFT + plot_width / 2)}" '
            f'y="{_number(top + plot_height / 2)}" text-anchor="middle">'
            f"{escape(empty_text)}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every text above is escaped or a formatted number


def _segments(points: Iterable[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Split ``points`` at their None values into runs of (x, y)."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((x, y))
    return [segment for segment in segments if segment]


# --- the dashboard's charts -------------------------------------------------------------


def time_ticks(first: float, last: float, *, days: bool) -> list[tuple[float, str]]:
    """(Unix s, label) ticks between ``first`` and ``last`` in the current time zone:
    every local midnight labelled "Mon 3" when ``days``, else every 4 hours "14:00"."""
    ticks: list[tuple[float, str]] = []
    zone = timezone.get_current_timezone()
    # Step through the local hours by Unix time, so a DST change neither repeats nor
    # skips an hour and zones with half-hour offsets get their own hour starts.
    start = datetime.fromtimestamp(first, zone).replace(minute=0, second=0, microsecond=0)
    at = start.timestamp()
    while at <= last:
        if at >= first:
            moment = datetime.fromtimestamp(at, zone)
            if days and moment.hour == 0:
                ticks.append((at, f"{moment:%a} {moment.day}"))
            elif not days and moment.hour % 4 == 0:
                ticks.append((at, f"{moment:%H}:00"))
        at += 3600
    return ticks


def _axis(points: Sequence[dict[str, Any]]) -> tuple[tuple[float, float], list[tuple[float, str]]]:
    first = float(points[0]["start"])
    last = float(points[-1]["start"] + 3600)
    return (first, last), time_ticks(first, last, days=len(points) > 48)


def _hourly(points: Sequence[dict[str, Any]], value: Any) -> list[tuple[float, float | None]]:
    """(mid-hour Unix s, value(point)) for each point."""
    return [(point["start"] + 1800.0, value(point)) for point in points]


def response_time_chart(points: Sequence[dict[str, Any]]) -> SafeString:
    """p95 (ms) per hour of each stage that has turns in ``points``."""
    from mpai.metrics.record import STAGES

    stages = [s for s in STAGES if any(p["stages"][s]["count"] for p in points)]
    lines = [
        Line(f"{stage} p95", _hourly(points, lambda p, s=stage: p["stages"][s]["p95"]))
        for stage in stages
    ]
    x_range, ticks = _axis(points)
    return line_chart(
        title="Response time per stage (p95)",
        lines=lines,
        x_range=x_range,
        x_ticks=ticks,
        unit="ms",
    )


def total_percentiles_chart(points: Sequence[dict[str, Any]]) -> SafeString:
    """p50, p95 and p99 (ms) per hour of a whole turn (stage ``total``)."""
    lines = [
        Line(f"total {q}", _hourly(points, lambda p, q=q: p["stages"]["total"][q]))
        for q in ("p50", "p95", "p99")
    ]
    x_range, ticks = _axis(points)
    return line_chart(
        title="Turn time (p50, p95, p99)", lines=lines, x_range=x_range, x_ticks=ticks, unit="ms"
    )


def turns_chart(points: Sequence[dict[str, Any]]) -> SafeString:
    """Turns, errors and cached turns per hour."""
    lines = [
        Line("turns", _hourly(points, lambda p: float(p["turns"]))),
        Line("errors", _hourly(points, lambda p: float(p["errors"]))),
        Line("cached", _hourly(points, lambda p: float(p["cached"]))),
    ]
    x_range, ticks = _axis(points)
    if not any(p["turns"] for p in points):
        lines = [Line(line.label, []) for line in lines]
    return line_chart(
        title="Turns per hour", lines=lines, x_range=x_range, x_ticks=ticks, unit="count"
    )


def rate_chart(points: Sequence[dict[str, Any]], key: str, title: str, label: str) -> SafeString:
    """A fraction per hour (``error_rate`` or ``cache_hit_rate``), shown in %."""
    x_range, ticks = _axis(points)
    return line_chart(
        title=title,
        lines=[Line(label, _hourly(points, lambda p: p[key]))],
        x_range=x_range,
        x_ticks=ticks,
        unit="fraction",
    )


def memory_chart(
    samples: Sequence[tuple[float, float]], x_range: tuple[float, float], *, days: bool
) -> SafeString:
    """Resident memory (bytes) of the process that ran each health snapshot:
    ``samples`` are (Unix s, bytes), oldest first."""
    return line_chart(
        title="Process memory (resident)",
        lines=[Line("resident memory", list(samples))],
        x_range=x_range,
        x_ticks=time_ticks(*x_range, days=days),
        unit="bytes",
        empty_text="No memory figures in this window.",
    )
