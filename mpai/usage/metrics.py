"""Prometheus metrics of usage and quotas, on prometheus-client's default registry.

:mod:`mpai.metrics.prometheus` exposes the default registry at ``/metrics`` (or, in
multiprocess mode, every process's files, which these counters write too), so the
counters below appear there once this module is imported; the usage receivers import
it when they are connected (``mpai.apps``).

- ``mpai_cost_total{model,currency}``: the cost of the recorded turns in the currency
  (``MPAI["CURRENCY"]``); models come from the site's settings.
- ``mpai_quota_exceeded_total{plan}``: messages refused by a quota, by the
  ``MPAI["QUOTAS"]`` key applied (``default`` for users without a listed plan).

Both are counted while ``MPAI["METRICS_ENABLED"]``, as the turn metrics are.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import Counter

from mpai.conf import mpai_settings

COST = Counter(
    "mpai_cost",
    "Cost of the recorded chat turns in the currency, by model (MPAI['PRICES']).",
    ["model", "currency"],
)
QUOTA_EXCEEDED = Counter(
    "mpai_quota_exceeded",
    "Chat messages refused by a plan quota, by the MPAI['QUOTAS'] key applied.",
    ["plan"],
)


def observe_cost(model: str, currency: str, cost: Decimal) -> None:
    """``mpai_cost_total{model,currency}`` += ``cost`` (currency units, as a float)."""
    if mpai_settings.METRICS_ENABLED and cost > 0:
        COST.labels(model=model or "other", currency=currency).inc(float(cost))


def quota_exceeded(plan: str) -> None:
    """``mpai_quota_exceeded_total{plan}`` += 1 (``plan``: a ``MPAI["QUOTAS"]`` key)."""
    if mpai_settings.METRICS_ENABLED:
        QUOTA_EXCEEDED.labels(plan=plan).inc()
