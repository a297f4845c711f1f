"""The health checks mpai ships: one small class per dependency.

Each class is a :class:`~mpai.health.results.HealthCheck`: its options are keyword
arguments of the constructor (``MPAI["HEALTH"]["CHECKS"]`` entries
``{"BACKEND": "<import string>", "OPTIONS": {...}}``), thresholds default to
``MPAI["HEALTH"]`` and are read when the check is built. Messages and details never
carry a secret: URLs go through :func:`~mpai.health.results.redact_url`, API keys are
never shown.

Names (the keys of alerts): ``database``, ``cache:<layer>`` (one per layer of a
:class:`mpai.cache.LayeredCache`, e.g. ``cache:memory``, ``cache:redis``,
``cache:database``; ``cache`` for any other backend), ``redis``, ``channel_layer``,
``celery``, ``scheduled_tasks``, ``provider``, ``memory``, ``cpu``, ``disk``,
``response_times``.

This module imports no Django model at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from django.conf import settings

from mpai.conf import mpai_settings
from mpai.health.results import HealthCheck, ServiceUnavailable, ServiceWarning, redact_url

__all__ = [
    "DEFAULT_CHECKS",
    "CacheCheck",
    "CeleryCheck",
    "ChannelLayerCheck",
    "CpuCheck",
    "DatabaseCheck",
    "DiskCheck",
    "MemoryCheck",
    "ProviderCheck",
    "RedisCheck",
    "ResponseTimesCheck",
    "ScheduledTasksCheck",
]

#: The checks run when ``MPAI["HEALTH"]["CHECKS"]`` is None, in this order.
#: ``CacheCheck`` without a ``layer`` stands for one check per configured cache layer.
DEFAULT_CHECKS: list[str] = [
    "mpai.health.checks.DatabaseCheck",
    "mpai.health.checks.CacheCheck",
    "mpai.health.checks.RedisCheck",
    "mpai.health.checks.ChannelLayerCheck",
    "mpai.health.checks.CeleryCheck",
    "mpai.health.checks.ScheduledTasksCheck",
    "mpai.health.checks.ProviderCheck",
    "mpai.health.checks.MemoryCheck",
    "mpai.health.checks.CpuCheck",
    "mpai.health.checks.DiskCheck",
    "mpai.health.checks.ResponseTimesCheck",
]


def _health(key: str, value: Any = None) -> Any:
    """``value`` if given, else ``MPAI["HEALTH"][key]``."""
    return mpai_settings.HEALTH[key] if value is None else value


def _probe_key() -> str:
    return f"mpai:health:{uuid.uuid4().hex}"


def _fraction_status(
    value: float, warning: float | None, error: float | None, what: str, details: dict[str, Any]
) -> str:
    """Return the OK message for ``what`` at ``value`` (a fraction), or raise past a
    threshold (``ServiceUnavailable`` past ``error``, ``ServiceWarning`` past ``warning``)."""
    message = f"{what} at {value:.0%}"
    if error is not None and value >= error:
        raise ServiceUnavailable(f"{message} (error at {error:.0%})", **details)
    if warning is not None and value >= warning:
        raise ServiceWarning(f"{message} (warning at {warning:.0%})", **details)
    return message


# -- database ------------------------------------------------------------------------


class DatabaseCheck(HealthCheck):
    """A ``SELECT 1`` round trip on a database; on PostgreSQL also the connections in use
    against ``max_connections`` and the size of mpai's tables.

    Args:
        alias: the ``DATABASES`` alias (default ``"default"``).
        stats: False: the round trip only (the readiness probe).
        connections_warning, connections_error: fractions of ``max_connections`` in use
            (default ``DB_CONNECTIONS_WARNING``/``_ERROR``).

    Details: ``vendor``, ``round_trip_ms``; on PostgreSQL ``connections``,
    ``max_connections``, ``connections_fraction``, ``tables_bytes`` (``{table: bytes}``,
    tables whose name starts with ``mpai_``, indexes and TOAST included) and
    ``total_bytes``.
    """

    name = "database"
    label = "Database"

    def __init__(
        self,
        *,
        alias: str = "default",
        stats: bool = True,
        connections_warning: float | None = None,
        connections_error: float | None = None,
    ) -> None:
        self.alias = alias
        self.stats = stats
        self.connections_warning = float(_health("DB_CONNECTIONS_WARNING", connections_warning))
        self.connections_error = float(_health("DB_CONNECTIONS_ERROR", connections_error))

    def check(self) -> tuple[str, dict[str, Any]]:
        from django.db import DatabaseError, connections

        connection = connections[self.alias]
        details: dict[str, Any] = {"vendor": connection.vendor}
        try:
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            details["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 3)
            if self.stats and connection.vendor == "postgresql":
                details.update(self._postgresql(connection))
        except DatabaseError as exc:
            raise ServiceUnavailable(
                f"database {self.alias!r} unavailable ({type(exc).__name__})", **details
            ) from exc
        message = f"{connection.vendor} answered in {details['round_trip_ms']:.1f} ms"
        if "connections_fraction" in details:
            message = _fraction_status(
                details["connections_fraction"],
                self.connections_warning,
                self.connections_error,
                f"{message}; connections in use {details['connections']} of "
                f"{details['max_connections']},",
                details,
            )
        return message, details

    @staticmethod
    def _postgresql(connection: Any) -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute("SHOW max_connections")
            max_connections = int(cursor.fetchone()[0])
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
            in_use = int(cursor.fetchone()[0])
            cursor.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND c.relname LIKE %s "
                "AND n.nspname = ANY (current_schemas(false)) ORDER BY c.relname",
                ["mpai\\_%"],
            )
            tables = {str(name): int(size) for name, size in cursor.fetchall()}
        return {
            "connections": in_use,
            "max_connections": max_connections,
            "connections_fraction": round(in_use / max_connections, 4) if max_connections else 0,
            "tables_bytes": tables,
            "total_bytes": sum(tables.values()),
        }


# -- cache -----------------------------------------------------------------------------


class CacheCheck(HealthCheck):
    """A set/get/delete round trip (unique key, 10 s lifetime) on one cache layer.

    Args:
        alias: the ``CACHES`` alias (default ``"default"``).
        layer: a layer name of a :class:`mpai.cache.LayeredCache` (``"memory"``,
            ``"redis"``, ``"database"`` or a configured ``NAME``). None: the runner
            expands the check into one per configured layer (:meth:`expand`); on a cache
            that is not layered, the round trip goes through the cache itself.

    The layer's own backend is called directly, past its circuit breaker, so the
    check sees the layer as it is now. Name ``cache:<layer>`` (``cache`` for a plain
    cache). Details: ``round_trip_ms``, ``backend``, and the layer's counters from
    ``LayeredCache.stats()`` (``state`` is its breaker: ``closed``, ``open``,
    ``half_open``). A round trip that works while the breaker is still open is a
    warning (requests skip the layer until its next probe).

    Raises (from :meth:`check`):
        ServiceUnavailable: the layer failed, or read back another value;
            ``KeyError``-like misconfiguration (an unknown layer) is an error too.
    """

    name = "cache"
    label = "Cache"

    def __init__(self, *, alias: str = "default", layer: str | None = None) -> None:
        self.alias = alias
        self.layer = layer
        if layer is not None:
            self.name = f"cache:{layer}"  # type: ignore[misc]  # one check per layer

    def expand(self) -> list[HealthCheck]:
        """One check per layer of a layered cache (this check when ``layer`` is set or
        the cache is not layered)."""
        if self.layer is not None:
            return [self]
        cache = self._cache()
        from mpai.cache import LayeredCache

        if not isinstance(cache, LayeredCache):
            return [self]
        return [CacheCheck(alias=self.alias, layer=name) for name in cache.stats()]

    def _cache(self) -> Any:
        from django.core.cache import caches

        return caches[self.alias]

    def check(self) -> tuple[str, dict[str, Any]]:
        from mpai.cache import LayeredCache

        cache = self._cache()
        if self.layer is None or not isinstance(cache, LayeredCache):
            return self._round_trip(cache, {"backend": type(cache).__name__})
        stats = cache.stats()
        if self.layer not in stats:
            raise ServiceUnavailable(f"cache {self.alias!r} has no layer {self.layer!r}")
        details: dict[str, Any] = {"layer": self.layer, **stats[self.layer]}
        stack = cache.stack
        if self.layer == stack.memory_name:
            return self._memory_round_trip(stack.store, details)
        shared = next(layer for layer in stack.layers if layer.name == self.layer)
        details["backend"] = shared.spec.backend
        message, details = self._round_trip(shared.backend, details)
        if details.get("state") not in (None, "closed"):
            raise ServiceWarning(
                f"{message}, but its circuit breaker is {details['state']} "
                "(requests skip the layer until its next probe)",
                **details,
            )
        return message, details

    def _round_trip(self, backend: Any, details: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key, value = _probe_key(), uuid.uuid4().hex
        started = time.perf_counter()
        try:
            backend.set(key, value, 10)
            read = backend.get(key)
            backend.delete(key)
        except Exception as exc:
            raise ServiceUnavailable(
                f"{self.name} round trip failed ({type(exc).__name__})", **details
            ) from exc
        details["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if read != value:
            raise ServiceUnavailable(f"{self.name} did not return the value written", **details)
        return f"set/get/delete in {details['round_trip_ms']:.1f} ms", details

    def _memory_round_trip(self, store: Any, details: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key, value = _probe_key(), uuid.uuid4().bytes
        started = time.perf_counter()
        store.store(key, value, time.time() + 10)
        read = store.get(key)
        store.invalidate([key])
        details["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if read != value and details.get("max_entries"):
            raise ServiceUnavailable("memory layer did not return the value written", **details)
        return f"set/get/delete in {details['round_trip_ms']:.3f} ms", details


# -- redis -----------------------------------------------------------------------------


def configured_redis_url() -> str | None:
    """The Redis URL mpai uses: ``RATE_LIMIT["REDIS_URL"]``, else ``METRICS_REDIS_URL``,
    else the project's ``settings.REDIS_URL``; None when there is none."""
    return (
        mpai_settings.RATE_LIMIT.get("REDIS_URL")
        or mpai_settings.METRICS_REDIS_URL
        or getattr(settings, "REDIS_URL", None)
        or None
    )


class RedisCheck(HealthCheck):
    """``PING`` and ``INFO`` on the Redis server mpai uses.

    Args:
        url: the Redis URL (default :func:`configured_redis_url`; none: OK "not configured").
        timeout: socket connect and read timeout (s; default half of
            ``MPAI["HEALTH"]["TIMEOUT"]``, at most 2 s).

    Details: ``url`` (without credentials), ``ping_ms``, ``redis_version``,
    ``used_memory`` (bytes), ``maxmemory`` (bytes, 0 = no limit),
    ``connected_clients``, ``uptime_s``.
    """

    name = "redis"
    label = "Redis"

    def __init__(self, *, url: str | None = None, timeout: float | None = None) -> None:
        self.url = url if url is not None else configured_redis_url()
        if timeout is None:
            timeout = min(2.0, float(mpai_settings.HEALTH["TIMEOUT"]) / 2)
        self.timeout = float(timeout)

    def check(self) -> tuple[str, dict[str, Any]]:
        if not self.url:
            return "not configured", {}
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        details: dict[str, Any] = {"url": redact_url(self.url)}
        client = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            started = time.perf_counter()
            client.ping()
            details["ping_ms"] = round((time.perf_counter() - started) * 1000, 3)
            info: dict[str, Any] = cast(dict[str, Any], client.info())
        except redis.TimeoutError as exc:
            raise ServiceUnavailable(
                f"Redis at {details['url']} did not answer within {self.timeout:g} s", **details
            ) from exc
        except redis.RedisError as exc:
            raise ServiceUnavailable(
                f"Redis at {details['url']} unavailable ({type(exc).__name__})", **details
            ) from exc
        finally:
            client.close()
        for key in ("redis_version", "used_memory", "maxmemory", "connected_clients"):
            if key in info:
                details[key] = info[key]
        if "uptime_in_seconds" in info:
            details["uptime_s"] = info["uptime_in_seconds"]
        return f"PING in {details['ping_ms']:.1f} ms", details


# -- channel layer ---------------------------------------------------------------------


class ChannelLayerCheck(HealthCheck):
    """Send a message to a fresh channel of the channel layer and receive it back.

    Args:
        alias: the ``CHANNEL_LAYERS`` alias (default ``"default"``; none configured:
            OK "not configured").
        timeout: seconds the send and receive may take together (default 80 % of
            ``MPAI["HEALTH"]["TIMEOUT"]``).

    Details: ``backend``, ``round_trip_ms``.
    """

    name = "channel_layer"
    label = "Channel layer"

    def __init__(self, *, alias: str = "default", timeout: float | None = None) -> None:
        self.alias = alias
        if timeout is None:
            timeout = float(mpai_settings.HEALTH["TIMEOUT"]) * 0.8
        self.timeout = float(timeout)

    def check(self) -> tuple[str, dict[str, Any]]:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = get_channel_layer(self.alias)
        if layer is None:
            return "not configured", {}
        details: dict[str, Any] = {"backend": type(layer).__name__}
        nonce = uuid.uuid4().hex

        async def round_trip() -> Any:
            channel = await layer.new_channel("mpai-health.")
            await layer.send(channel, {"type": "mpai.health", "nonce": nonce})
            return await layer.receive(channel)

        async def bounded() -> Any:
            return await asyncio.wait_for(round_trip(), self.timeout)

        started = time.perf_counter()
        try:
            received = async_to_sync(bounded)()
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"no message back within {self.timeout:g} s", **details
            ) from exc
        except Exception as exc:
            raise ServiceUnavailable(
                f"channel layer unavailable ({type(exc).__name__})", **details
            ) from exc
        details["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if not isinstance(received, dict) or received.get("nonce") != nonce:
            raise ServiceUnavailable("received another message than the one sent", **details)
        return f"send/receive in {details['round_trip_ms']:.1f} ms", details


# -- celery ----------------------------------------------------------------------------


def _celery_app(app: Any = None) -> Any:
    """The Celery app: ``app`` (the object or its import string), else Celery's
    current app (the project's, once its module is imported)."""
    if isinstance(app, str):
        from django.utils.module_loading import import_string

        return import_string(app)
    if app is not None:
        return app
    from celery import current_app

    return current_app


class CeleryCheck(HealthCheck):
    """Workers answering a ping, and the length of the default queue on a Redis broker.

    Args:
        app: the Celery app or its import string (default Celery's current app).
        timeout: seconds the workers have to answer (default 40 % of
            ``MPAI["HEALTH"]["TIMEOUT"]``, at most 1 s: a ping waits its whole timeout for replies).

    With ``CELERY_TASK_ALWAYS_EAGER`` tasks run in the caller: OK "eager mode".
    No worker answering is an error. Details: ``broker`` (without credentials),
    ``workers`` (names), ``queue``, ``queue_length`` (Redis brokers).
    """

    name = "celery"
    label = "Celery"

    def __init__(self, *, app: Any = None, timeout: float | None = None) -> None:
        self.app = app
        if timeout is None:
            timeout = min(1.0, float(mpai_settings.HEALTH["TIMEOUT"]) * 0.4)
        self.timeout = float(timeout)

    def check(self) -> tuple[str, dict[str, Any]]:
        app = _celery_app(self.app)
        conf = app.conf
        if conf.task_always_eager:
            return "eager mode (tasks run in the caller)", {"eager": True}
        broker = str(conf.broker_url or "")
        details: dict[str, Any] = {"broker": redact_url(broker), "queue": conf.task_default_queue}
        if broker.startswith(("redis://", "rediss://")):
            details["queue_length"] = self._redis_queue_length(broker, conf.task_default_queue)
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=self.timeout)
                replies = app.control.ping(timeout=self.timeout, connection=connection) or []
        except Exception as exc:
            raise ServiceUnavailable(
                f"broker at {details['broker']} unavailable ({type(exc).__name__})", **details
            ) from exc
        workers = sorted(name for reply in replies for name in reply)
        details["workers"] = workers
        if not workers:
            raise ServiceUnavailable(
                f"no Celery worker answered within {self.timeout:g} s", **details
            )
        return f"{len(workers)} worker(s) answered", details

    def _redis_queue_length(self, url: str, queue: str) -> int | None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return int(cast(int, client.llen(queue)))
        except redis.RedisError:
            return None
        finally:
            client.close()


# -- scheduled tasks -------------------------------------------------------------------


def schedule_seconds(schedule: Any) -> float | None:
    """The period of a beat schedule entry's ``schedule`` in s: a number, a
    ``timedelta`` or a ``celery.schedules.schedule``; None for others (``crontab``,
    ``solar``), which have no fixed period."""
    if isinstance(schedule, int | float):
        return float(schedule)
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, timedelta) and not hasattr(schedule, "minute"):
        return run_every.total_seconds()
    return None


def beat_schedule(app: Any = None) -> dict[str, float | None]:
    """``{task name: period in s (None: no fixed period)}`` of the beat schedule's mpai
    tasks (names starting with ``mpai.``), from the Celery app's ``beat_schedule``, else
    ``settings.CELERY_BEAT_SCHEDULE``. A task scheduled twice keeps its shortest period."""
    try:
        entries = _celery_app(app).conf.beat_schedule or {}
    except Exception:
        entries = {}
    if not entries:
        entries = getattr(settings, "CELERY_BEAT_SCHEDULE", None) or {}
    tasks: dict[str, float | None] = {}
    for entry in entries.values():
        task = entry.get("task", "") if isinstance(entry, dict) else ""
        if not task.startswith("mpai."):
            continue
        period = schedule_seconds(entry.get("schedule"))
        known = tasks.get(task)
        tasks[task] = period if known is None else min(known, period or known)
    return tasks


class ScheduledTasksCheck(HealthCheck):
    """Each mpai beat task has succeeded recently (its :class:`TaskHeartbeat`).

    A task is *late* (error) when its last success is older than its period plus a
    margin: ``period * (1 + margin)``, the margin at least ``margin_min`` s. A task whose
    last failure is newer than its last success is *failing* (warning).

    A task that never succeeded is judged from the time it was first seen scheduled:
    the oldest of its own last start or failure and the oldest stored health snapshot
    whose ``scheduled_tasks`` result lists it (so the first run of this check after a
    task joins the schedule starts its clock). Less than the allowed time since then it
    is *pending* (ok); past it, late. Tasks without a fixed period (``crontab``) are
    listed as ``unsupported`` and not judged.

    Args:
        app: the Celery app or its import string (default Celery's current app).
        margin: fraction of the period (default ``TASK_MARGIN``).
        margin_min: seconds (default ``TASK_MARGIN_MIN``).

    Details: ``tasks``: ``{task: {"state", "period_s", "allowed_s",
    "last_succeeded_at", "last_failed_at" (ISO 8601 or None), "age_s",
    "last_error"}}``; ``state`` is ``ok``, ``pending``, ``failing``, ``late`` or
    ``unsupported``.
    """

    name = "scheduled_tasks"
    label = "Scheduled tasks"

    def __init__(
        self,
        *,
        app: Any = None,
        margin: float | None = None,
        margin_min: float | None = None,
    ) -> None:
        self.app = app
        self.margin = float(_health("TASK_MARGIN", margin))
        self.margin_min = float(_health("TASK_MARGIN_MIN", margin_min))

    def allowed_seconds(self, period: float) -> float:
        """Seconds a task of ``period`` s may go without a success."""
        return period + max(period * self.margin, self.margin_min)

    def check(self) -> tuple[str, dict[str, Any]]:
        from django.utils import timezone

        from mpai.health.models import TaskHeartbeat

        schedule = beat_schedule(self.app)
        if not schedule:
            return "no mpai task in the beat schedule", {"tasks": {}}
        now = timezone.now()
        beats = {beat.task: beat for beat in TaskHeartbeat.objects.filter(task__in=schedule)}
        first_seen = self._first_seen(
            set(schedule) - {t for t, b in beats.items() if b.last_succeeded_at}
        )
        tasks: dict[str, dict[str, Any]] = {}
        late: list[str] = []
        failing: list[str] = []
        for task, period in sorted(schedule.items()):
            beat = beats.get(task)
            succeeded = beat.last_succeeded_at if beat else None
            failed = beat.last_failed_at if beat else None
            info: dict[str, Any] = {
                "period_s": period,
                "last_succeeded_at": _iso(succeeded),
                "last_failed_at": _iso(failed),
                "last_error": beat.last_error if beat and failed else "",
            }
            tasks[task] = info
            if period is None:
                info["state"] = "unsupported"
                continue
            allowed = self.allowed_seconds(period)
            info["allowed_s"] = allowed
            if succeeded is None:
                starts = [
                    t for t in (first_seen.get(task), beat and beat.last_started_at, failed) if t
                ]
                since = min(starts) if starts else now
                info["age_s"] = round((now - since).total_seconds(), 3)
                info["state"] = "late" if info["age_s"] > allowed else "pending"
            else:
                info["age_s"] = round((now - succeeded).total_seconds(), 3)
                info["state"] = "late" if info["age_s"] > allowed else "ok"
            if info["state"] == "late":
                late.append(task)
            elif failed is not None and (succeeded is None or failed > succeeded):
                info["state"] = "failing"
                failing.append(task)
        details = {"tasks": tasks}
        if late:
            raise ServiceUnavailable(
                f"not succeeded within its schedule: {', '.join(late)}", **details
            )
        if failing:
            raise ServiceWarning(f"last run failed: {', '.join(failing)}", **details)
        return f"{len(tasks)} task(s) on schedule", details

    def _first_seen(self, tasks: set[str]) -> dict[str, datetime]:
        """``{task: created_at of the oldest snapshot whose scheduled_tasks result lists
        it}`` for the given tasks (at most the snapshots kept)."""
        from mpai.health.models import HealthSnapshot

        found: dict[str, datetime] = {}
        if not tasks:
            return found
        rows = HealthSnapshot.objects.order_by("created_at", "id").values_list(
            "created_at", "results"
        )
        for created_at, results in rows.iterator():
            for result in results or []:
                if isinstance(result, dict) and result.get("name") == self.name:
                    listed = (result.get("details") or {}).get("tasks") or {}
                    for task in tasks.intersection(listed) - found.keys():
                        found[task] = created_at
            if len(found) == len(tasks):
                break
        return found


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# -- provider --------------------------------------------------------------------------


def error_rate(summary: dict[str, Any]) -> tuple[int, int]:
    """``(errors, turns)`` of a :func:`mpai.metrics.summary`: turns whose outcome is
    neither ``complete`` nor ``cancelled``, and all turns."""
    outcomes = summary.get("outcomes") or {}
    errors = sum(n for outcome, n in outcomes.items() if outcome not in ("complete", "cancelled"))
    return int(errors), int(summary.get("turns") or 0)


class ProviderCheck(HealthCheck):
    """The AI provider answers its models endpoint, and few of the last hour's turns
    failed.

    ``GET {base_url}/models`` with the provider's API key (never a completion: it costs
    nothing); no answer within ``timeout``, a connection error, HTTP 5xx, 401 or 403 is
    an error, another non-2xx a warning. The offline provider: OK "offline provider";
    a provider without ``base_url``: OK "not checked".

    The error rate: turns of the last hour whose outcome is neither ``complete`` nor
    ``cancelled`` (:func:`mpai.metrics.summary`), judged when there were at least
    ``min_turns`` turns and metrics are enabled.

    Args:
        provider: ``{"BACKEND", "OPTIONS"}`` (default ``MPAI["PROVIDER"]``).
        timeout: seconds (default ``PROVIDER_TIMEOUT``).
        error_rate_warning, error_rate_error: fractions (default
            ``PROVIDER_ERROR_RATE_WARNING``/``_ERROR``).
        min_turns: fewest turns for the error rate to count (default 10).

    Details: ``provider`` (class), ``url`` (without credentials), ``status_code``,
    ``models`` (count, when listed), ``response_ms``, ``turns``, ``errors``,
    ``error_rate``; ``metrics_error`` when the metrics store could not be read (the
    rate is then not judged).
    """

    name = "provider"
    label = "AI provider"

    def __init__(
        self,
        *,
        provider: dict[str, Any] | None = None,
        timeout: float | None = None,
        error_rate_warning: float | None = None,
        error_rate_error: float | None = None,
        min_turns: int = 10,
    ) -> None:
        self.provider_config = provider
        self.timeout = float(_health("PROVIDER_TIMEOUT", timeout))
        self.error_rate_warning = float(_health("PROVIDER_ERROR_RATE_WARNING", error_rate_warning))
        self.error_rate_error = float(_health("PROVIDER_ERROR_RATE_ERROR", error_rate_error))
        self.min_turns = int(min_turns)

    def _provider(self) -> Any:
        from mpai.providers import build_provider, get_provider

        if self.provider_config is not None:
            return build_provider(self.provider_config)
        return get_provider()

    def check(self) -> tuple[str, dict[str, Any]]:
        from mpai.providers.offline import OfflineProvider

        provider = self._provider()
        details: dict[str, Any] = {"provider": type(provider).__name__}
        if isinstance(provider, OfflineProvider):
            return "offline provider", details
        base_url = (getattr(provider, "options", None) or {}).get("base_url")
        if not base_url:
            return f"not checked ({type(provider).__name__} has no base_url)", details
        message = self._models(provider, str(base_url), details)
        self._error_rate(details)
        return message, details

    def _models(self, provider: Any, base_url: str, details: dict[str, Any]) -> str:
        import requests

        url = base_url.rstrip("/") + "/models"
        details["url"] = redact_url(url)
        headers = {"Accept": "application/json"}
        session = getattr(provider, "session", None)
        if session is not None:
            for name in ("Authorization", "User-Agent"):
                if name in session.headers:
                    headers[name] = session.headers[name]
        started = time.perf_counter()
        try:
            response = requests.get(url, headers=headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise ServiceUnavailable(
                f"models endpoint did not answer within {self.timeout:g} s", **details
            ) from exc
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                f"models endpoint unreachable ({type(exc).__name__})", **details
            ) from exc
        details["response_ms"] = round((time.perf_counter() - started) * 1000, 3)
        details["status_code"] = code = response.status_code
        response.close()
        if code >= 500 or code in (401, 403):
            reason = "rejected the API key" if code in (401, 403) else "failed"
            raise ServiceUnavailable(f"models endpoint {reason} (HTTP {code})", **details)
        if not 200 <= code < 300:
            raise ServiceWarning(f"models endpoint answered HTTP {code}", **details)
        try:
            listed = response.json().get("data")
            if isinstance(listed, list):
                details["models"] = len(listed)
        except (ValueError, AttributeError):
            pass
        return f"models endpoint answered in {details['response_ms']:.0f} ms"

    def _error_rate(self, details: dict[str, Any]) -> None:
        if not mpai_settings.METRICS_ENABLED:
            return
        from mpai import metrics

        try:
            summary = metrics.summary("1h")
        except Exception as exc:  # the metrics store is down: no rate, not a provider error
            details["metrics_error"] = type(exc).__name__
            return
        errors, turns = error_rate(summary)
        details.update(
            turns=turns, errors=errors, error_rate=round(errors / turns, 4) if turns else 0
        )
        if turns < self.min_turns:
            return
        _fraction_status(
            errors / turns,
            self.error_rate_warning,
            self.error_rate_error,
            f"provider errors in the last hour ({errors} of {turns} turns)",
            details,
        )


# -- process resources -----------------------------------------------------------------


def memory_limit() -> tuple[int, str]:
    """``(bytes, source)``: the cgroup's memory limit (``/sys/fs/cgroup/memory.max``,
    cgroup v1 ``memory.limit_in_bytes``) when set, else the machine's total memory."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text), "cgroup"
    return total, "total"


class MemoryCheck(HealthCheck):
    """Resident memory of this process against a limit.

    Args:
        limit_bytes: the limit (default ``MEMORY_LIMIT_BYTES``; None: the cgroup's
            limit, else the machine's total memory, :func:`memory_limit`).
        warning, error: fractions of the limit (default ``MEMORY_WARNING``/``_ERROR``).

    Details: ``rss_bytes``, ``limit_bytes``, ``limit_source`` (``setting``, ``cgroup``,
    ``total``), ``fraction``.
    """

    name = "memory"
    label = "Memory"

    def __init__(
        self,
        *,
        limit_bytes: int | None = None,
        warning: float | None = None,
        error: float | None = None,
    ) -> None:
        self.limit_bytes = _health("MEMORY_LIMIT_BYTES", limit_bytes)
        self.warning = float(_health("MEMORY_WARNING", warning))
        self.error = float(_health("MEMORY_ERROR", error))

    def check(self) -> tuple[str, dict[str, Any]]:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
        if self.limit_bytes:
            limit, source = int(self.limit_bytes), "setting"
        else:
            limit, source = memory_limit()
        fraction = rss / limit
        details = {
            "rss_bytes": rss,
            "limit_bytes": limit,
            "limit_source": source,
            "fraction": round(fraction, 4),
        }
        message = _fraction_status(
            fraction,
            self.warning,
            self.error,
            f"resident {rss / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB ({source}),",
            details,
        )
        return message, details


class CpuCheck(HealthCheck):
    """CPU use of the machine (all cores) over a short interval.

    Args:
        interval: seconds sampled (default ``CPU_INTERVAL``).
        warning, error: fractions (default ``CPU_WARNING``/``_ERROR``).

    Details: ``fraction``, ``interval_s``, ``cpus``, ``load_average`` (1, 5, 15 min).
    """

    name = "cpu"
    label = "CPU"

    def __init__(
        self,
        *,
        interval: float | None = None,
        warning: float | None = None,
        error: float | None = None,
    ) -> None:
        self.interval = float(_health("CPU_INTERVAL", interval))
        self.warning = float(_health("CPU_WARNING", warning))
        self.error = float(_health("CPU_ERROR", error))

    def check(self) -> tuple[str, dict[str, Any]]:
        import psutil

        fraction = psutil.cpu_percent(interval=self.interval) / 100
        details: dict[str, Any] = {
            "fraction": round(fraction, 4),
            "interval_s": self.interval,
            "cpus": psutil.cpu_count(),
        }
        with contextlib.suppress(AttributeError, OSError):
            details["load_average"] = [round(x, 2) for x in psutil.getloadavg()]
        return _fraction_status(fraction, self.warning, self.error, "CPU", details), details


class DiskCheck(HealthCheck):
    """Disk use of the file system holding a path.

    Args:
        path: the path (default ``DISK_PATH``; None: ``settings.BASE_DIR``, else "/").
        warning, error: fractions used (default ``DISK_WARNING``/``_ERROR``).

    Details: ``path``, ``total_bytes``, ``used_bytes``, ``free_bytes``, ``fraction``.
    """

    name = "disk"
    label = "Disk"

    def __init__(
        self,
        *,
        path: str | None = None,
        warning: float | None = None,
        error: float | None = None,
    ) -> None:
        self.path = str(
            path or mpai_settings.HEALTH["DISK_PATH"] or getattr(settings, "BASE_DIR", None) or "/"
        )
        self.warning = float(_health("DISK_WARNING", warning))
        self.error = float(_health("DISK_ERROR", error))

    def check(self) -> tuple[str, dict[str, Any]]:
        import psutil

        try:
            usage = psutil.disk_usage(self.path)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot read disk usage ({type(exc).__name__})") from exc
        fraction = usage.used / usage.total if usage.total else 0.0
        details = {
            "path": self.path,
            "total_bytes": int(usage.total),
            "used_bytes": int(usage.used),
            "free_bytes": int(usage.free),
            "fraction": round(fraction, 4),
        }
        message = _fraction_status(fraction, self.warning, self.error, "disk used", details)
        return f"{message}, {usage.free / 2**30:.1f} GiB free", details


# -- response times --------------------------------------------------------------------


class ResponseTimesCheck(HealthCheck):
    """p95 of each stage of the last hour's turns (:func:`mpai.metrics.summary`).

    Args:
        warning_ms, error_ms: thresholds of the ``total`` stage's p95 (ms; default
            ``RESPONSE_TIME_P95_WARNING_MS``/``_ERROR_MS``; None: no such level).

    Details: ``turns``, ``p95_ms`` (``{stage: ms or None}``). Metrics disabled: OK
    "metrics disabled"; no turn in the hour: OK; the metrics store unreadable: a
    warning.
    """

    name = "response_times"
    label = "Response times"

    def __init__(self, *, warning_ms: float | None = None, error_ms: float | None = None) -> None:
        health = mpai_settings.HEALTH
        self.warning_ms = (
            warning_ms if warning_ms is not None else health["RESPONSE_TIME_P95_WARNING_MS"]
        )
        self.error_ms = error_ms if error_ms is not None else health["RESPONSE_TIME_P95_ERROR_MS"]

    def check(self) -> tuple[str, dict[str, Any]]:
        if not mpai_settings.METRICS_ENABLED:
            return "metrics disabled", {}
        from mpai import metrics

        try:
            summary = metrics.summary("1h")
        except Exception as exc:
            raise ServiceWarning(
                f"metrics store unavailable ({type(exc).__name__})",
                metrics_error=type(exc).__name__,
            ) from exc
        stages = summary.get("stages") or {}
        details: dict[str, Any] = {
            "turns": summary.get("turns", 0),
            "p95_ms": {stage: figures.get("p95") for stage, figures in stages.items()},
        }
        total = details["p95_ms"].get("total")
        if total is None:
            return "no turn in the last hour", details
        message = f"p95 of a turn {total:.0f} ms over {details['turns']} turn(s)"
        if self.error_ms is not None and total > float(self.error_ms):
            raise ServiceUnavailable(f"{message} (error above {self.error_ms:g} ms)", **details)
        if self.warning_ms is not None and total > float(self.warning_ms):
            raise ServiceWarning(f"{message} (warning above {self.warning_ms:g} ms)", **details)
        return message, details
