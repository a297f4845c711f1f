"""System health: typed checks, their runner and snapshots, alert rules, notifications and
the admin dashboard (README, "System health").

- :mod:`mpai.health.results`: ``Status``, ``CheckResult`` and the ``HealthCheck`` base.
- :mod:`mpai.health.checks`: the checks mpai ships (database, cache layers, Redis, the
  channel layer, Celery and its scheduled tasks, the AI provider, process resources,
  response times).
- :mod:`mpai.health.runner`: runs the configured checks concurrently, each with its own
  timeout, and stores a :class:`~mpai.models.HealthSnapshot`.
- :mod:`mpai.health.alerts`: turns snapshots into alerts (fire after N failing runs,
  resolve after M passing ones) and :mod:`mpai.health.notifications` emails them.
- :mod:`mpai.health.views`: the dashboard in the admin and the liveness/readiness
  endpoints.

This module imports no Django model at import time.
"""
