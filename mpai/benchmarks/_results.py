"""Results of ``mpai_benchmark``: JSON rows, baselines, comparisons, the progress bar.

A row is the dict of :func:`mpai.benchmarks._stats.summary_row` (times in µs). A
baseline file is ``{"format": "mpai-benchmark-baseline", "version": 1, "created": ISO
8601 time, "rows": [row, ...]}``; :func:`load_rows` reads it or a plain list of rows
(what ``--json`` writes), so either can be compared with.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

BASELINE_FORMAT = "mpai-benchmark-baseline"
BASELINE_VERSION = 1
#: A p50 more than this fraction above the baseline's is flagged (0.10: 10 % slower).
DEFAULT_THRESHOLD = 0.10


def dumps_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a JSON array (indented, one key per line)."""
    return json.dumps(list(rows), indent=2) + "\n"


def dumps_baseline(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a baseline document (see the module docstring)."""
    document = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": list(rows),
    }
    return json.dumps(document, indent=2) + "\n"


def load_rows(text: str) -> list[dict[str, Any]]:
    """Parse a baseline document or a ``--json`` array into rows.

    Raises:
        ValueError: not JSON, or neither shape, or a row without ``suite``,
            ``operation`` and a numeric ``p50``.
    """
    document = json.loads(text)
    if isinstance(document, dict):
        if document.get("format") != BASELINE_FORMAT:
            raise ValueError("not an mpai benchmark baseline (no format key)")
        document = document.get("rows")
    if not isinstance(document, list):
        raise ValueError("expected a list of rows or a baseline document")
    for row in document:
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("suite"), str)
            or not isinstance(row.get("operation"), str)
            or not isinstance(row.get("p50"), int | float)
        ):
            raise ValueError(f"malformed row: {row!r}")
    return document


@dataclass(frozen=True)
class Comparison:
    """One operation against its baseline: ``ratio`` = current p50 / baseline p50."""

    suite: str
    operation: str
    baseline_p50: float | None  # µs; None: not in the baseline
    current_p50: float | None  # µs; None: not run this time
    threshold: float

    @property
    def ratio(self) -> float | None:
        if self.baseline_p50 is None or self.current_p50 is None or self.baseline_p50 <= 0:
            return None
        return self.current_p50 / self.baseline_p50

    @property
    def regressed(self) -> bool:
        """More than ``threshold`` slower than the baseline (p50)."""
        ratio = self.ratio
        return ratio is not None and ratio > 1 + self.threshold


def compare(
    current: Iterable[Mapping[str, Any]],
    baseline: Iterable[Mapping[str, Any]],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[Comparison]:
    """Pair rows by ``(suite, operation)``; current order first, then baseline-only rows."""
    base = {(row["suite"], row["operation"]): float(row["p50"]) for row in baseline}
    seen = set()
    result = []
    for row in current:
        key = (row["suite"], row["operation"])
        seen.add(key)
        result.append(Comparison(key[0], key[1], base.get(key), float(row["p50"]), threshold))
    for key, p50 in base.items():
        if key not in seen:
            result.append(Comparison(key[0], key[1], p50, None, threshold))
    return result


def format_comparisons(comparisons: Sequence[Comparison]) -> str:
    """A table of the comparisons: p50s in µs, the ratio, and a verdict per operation."""
    lines = [
        f"comparison with the baseline (p50; flagged when more than "
        f"{comparisons[0].threshold:.0%} slower)\n"
        if comparisons
        else "comparison with the baseline: no operations\n",
        f"{'suite':<10}{'operation':<40}{'base p50':>11}{'p50':>11}{'ratio':>8}  verdict\n",
    ]
    for item in comparisons:
        base = "-" if item.baseline_p50 is None else f"{item.baseline_p50:.1f}"
        now = "-" if item.current_p50 is None else f"{item.current_p50:.1f}"
        ratio = item.ratio
        if item.baseline_p50 is None:
            verdict = "new (not in the baseline)"
        elif item.current_p50 is None:
            verdict = "not run"
        elif ratio is None:
            verdict = "baseline p50 is 0"
        else:
            verdict = "SLOWER (flagged)" if item.regressed else "ok"
        shown = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(
            f"{item.suite:<10}{item.operation:<40}{base:>11}{now:>11}{shown:>8}  {verdict}\n"
        )
    return "".join(lines)


def progress_enabled(options: Mapping[str, Any], stream: IO[str] | None = None) -> bool:
    """Show a progress bar unless ``options["progress"]`` is false or stderr is no TTY."""
    stream = stream if stream is not None else sys.stderr
    if not options.get("progress", True):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(options: Mapping[str, Any], *, total: int, desc: str) -> Any:
    """A tqdm bar on stderr (https://tqdm.github.io/docs/tqdm/), disabled per
    :func:`progress_enabled`; a disabled bar's ``update`` and ``close`` do nothing."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not progress_enabled(options),
        leave=False,
        unit="it",
        dynamic_ncols=True,
    )
