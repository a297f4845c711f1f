"""Usage, cost and quotas per membership plan (README, "Usage, cost and quotas").

- :mod:`.models`: :class:`~mpai.usage.models.UsageDay`, one row per (user, day, model)
  with its requests, tokens and cost; :class:`~mpai.usage.models.QuotaRejection`, the
  refused checks per (day, plan, limit); the admin report's proxy model.
- :mod:`.pricing`: ``MPAI["PRICES"]`` parsed to ``Decimal``; the cost of a turn.
- :mod:`.windows`: the quota time zone, the day and month windows, their resets.
- :mod:`.store`: the atomic upserts and the database sums.
- :mod:`.recording`: the ``request_complete`` receiver that records every turn.
- :mod:`.quotas`: ``MPAI["QUOTAS"]``, :func:`~mpai.usage.quotas.check_quota` (raises
  :class:`~mpai.usage.quotas.QuotaExceeded`) and the Redis counters.
- :mod:`.api`: ``GET /api/mpai/v1/usage/``.
- :mod:`.reports`, :mod:`.admin`: the admin's usage report and its CSV export.
- :mod:`.metrics`: ``mpai_cost_total`` and ``mpai_quota_exceeded_total``.
- :mod:`.cleanup`: retention of the usage rows (``MPAI["USAGE_RETENTION_DAYS"]``).
"""
